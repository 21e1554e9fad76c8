"""Play complete episodes with a batch of policies, without the short-episode bias.

Evaluating with N parallel envs and keeping "the first n episodes to finish" over-samples short
episodes (often failures or early deaths). Instead env j is given a fixed quota of episodes up front
(``n // N`` or one more) and only its first ``quota[j]`` episodes count.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from envs.procgen_vec import ProcgenVecEnv


@dataclass
class EpisodeStats:
    """Per policy g and episode i: return, length, level seed, whether the level was completed."""

    returns: np.ndarray  # (G, n)
    lengths: np.ndarray  # (G, n)
    level_seeds: np.ndarray  # (G, n)
    successes: np.ndarray  # (G, n) bool


def quotas(episodes: int, num_envs: int) -> np.ndarray:
    return episodes // num_envs + (np.arange(num_envs) < episodes % num_envs)


def run_episodes(
    act: Callable[[torch.Tensor], torch.Tensor],
    envs: list[ProcgenVecEnv],
    episodes: int,
    device: torch.device,
    seed: int,
    on_step: Callable[[dict], None] | None = None,
    max_steps: int = 1_000_000,
) -> EpisodeStats:
    """``act`` maps uint8 observations (G, N, 64, 64, 3) on ``device`` to actions (G, N).

    Policy g plays in ``envs[g]``; every batch is reset with ``seed``, so all policies meet the same
    levels in the same order. ``on_step`` receives each step's info dict (for videos and counters).
    """
    g_count, n = len(envs), envs[0].num_envs
    quota = quotas(episodes, n)
    slot = np.concatenate([[0], np.cumsum(quota)[:-1]])  # where env j's episodes are stored
    done_count = np.zeros((g_count, n), np.int64)
    out = {k: np.zeros((g_count, episodes), dt) for k, dt in
           [("returns", np.float32), ("lengths", np.int64), ("level_seeds", np.int64), ("successes", bool)]}
    obs_np = np.stack([env.reset(seed=seed)[0] for env in envs])
    for _ in range(max_steps):
        if (done_count >= quota).all():
            break
        actions = act(torch.from_numpy(obs_np).to(device)).cpu().numpy()
        for g, env in enumerate(envs):
            obs_np[g], _, term, _, info = env.step(actions[g])
            if on_step is not None:
                on_step({"group": g, "terminated": term, **info})
            if not term.any():
                continue
            j = np.flatnonzero(term & (done_count[g] < quota))
            idx = slot[j] + done_count[g, j]
            out["returns"][g, idx] = info["episode_return"][j]
            out["lengths"][g, idx] = info["episode_length"][j]
            out["level_seeds"][g, idx] = info["prev_level_seed"][j]
            out["successes"][g, idx] = info["level_complete"][j]
            done_count[g, term] += 1
    else:
        raise RuntimeError(f"episodes did not finish within {max_steps} steps")
    return EpisodeStats(**out)
