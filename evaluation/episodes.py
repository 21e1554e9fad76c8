"""Play complete episodes with a batch of policies, without the short-episode bias.

Evaluating with N parallel envs and keeping "the first n episodes to finish" over-samples short
episodes (often failures or early deaths). Instead env j is given a fixed quota of episodes up front
(``n // N`` or one more) and only its first ``quota[j]`` episodes count. Episode i of the results
always comes from the same env slot and is that env's same-numbered episode (``episode_slots``),
and every batch is reset with the same seed, so episode i is played on the same level by every
policy and every mode: results of two modes can be compared episode by episode (paired).

The G env batches of a step are stepped in worker threads (procgen releases the GIL inside its C++
step, as in training's rollouts: ``training/native_learner.py:run_env_tasks``) and their frames go
to the device as one copy of one stacked (G, N, 64, 64, 3) host buffer, pinned on CUDA. Callbacks
and bookkeeping run on the calling thread in group order after every batch stepped, so the results
are those of stepping the batches one after another, bit for bit (tests/test_episodes.py).
"""
from __future__ import annotations

from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from envs.procgen_vec import OBS_SHAPE, ProcgenVecEnv


@dataclass
class EpisodeStats:
    """Per policy g and episode i: return, length, level seed, whether the level was completed.

    Episode i was played by env ``env_slots[i]`` of each group's batch, as that env's
    ``env_episodes[i]``-th counted episode (0-based): the same slot and level for every group.
    """

    returns: np.ndarray  # (G, n) float32
    lengths: np.ndarray  # (G, n) int64, env steps
    level_seeds: np.ndarray  # (G, n) int64
    successes: np.ndarray  # (G, n) bool
    env_slots: np.ndarray  # (n,) int64
    env_episodes: np.ndarray  # (n,) int64


def quotas(episodes: int, num_envs: int) -> np.ndarray:
    """(num_envs,) episodes each env contributes: ``episodes // num_envs``, the first
    ``episodes % num_envs`` envs one more."""
    return episodes // num_envs + (np.arange(num_envs) < episodes % num_envs)


def episode_slots(episodes: int, num_envs: int) -> tuple[np.ndarray, np.ndarray]:
    """Where each env's episodes are stored: (env slot, episode number within that env), both
    (episodes,). Env j's k-th counted episode is episode ``sum(quota[:j]) + k``."""
    quota = quotas(episodes, num_envs)
    env = np.repeat(np.arange(num_envs), quota)
    first = np.concatenate([[0], np.cumsum(quota)[:-1]])
    return env, np.arange(episodes) - first[env]


def run_episodes(
    act: Callable[[torch.Tensor], torch.Tensor],
    envs: list[ProcgenVecEnv],
    episodes: int,
    device: torch.device,
    seed: int,
    on_step: Callable[[dict], None] | None = None,
    max_steps: int = 1_000_000,
    skip_levels: Collection[int] | None = None,
    on_steps: Callable[[np.ndarray], None] | None = None,
) -> EpisodeStats:
    """``act`` maps uint8 observations (G, N, 64, 64, 3) on ``device`` to actions (G, N).

    Policy g plays in ``envs[g]`` (G batches of N envs each); every batch is reset with ``seed``, so
    all policies meet the same levels in the same order. Each step, after every batch stepped:

    - ``on_step`` receives each group's info dict in group order (for videos and counters): the
      env's info plus ``group``, ``terminated`` (N,) and ``episode`` (N,) int64, the index (into
      the n episodes of the results) of the episode that just ended and counts, -1 where none did;
    - ``on_steps`` receives the step's episode ends of all groups, (G, N) bool, at once (one copy
      of recurrent-state resets to the device per step instead of one per group).

    ``skip_levels``: episodes that started on one of these level seeds are not counted: not in an
    env's quota, not in the results; the env plays on until its quota is met on other levels.

    Raises RuntimeError when the episodes have not finished within ``max_steps`` steps.
    """
    g_count, n = len(envs), envs[0].num_envs
    quota = quotas(episodes, n)
    env_slots, env_episodes = episode_slots(episodes, n)
    first = np.concatenate([[0], np.cumsum(quota)[:-1]])  # where env j's episodes are stored
    skip = None if not skip_levels else np.fromiter(skip_levels, np.int64)
    done_count = np.zeros((g_count, n), np.int64)
    out = {k: np.zeros((g_count, episodes), dt) for k, dt in
           [("returns", np.float32), ("lengths", np.int64), ("level_seeds", np.int64), ("successes", bool)]}
    # One stacked host buffer the envs write their frames into: one copy to the device per step,
    # from pinned memory on CUDA so that it does not block the host.
    pinned = device.type == "cuda"
    host = torch.empty((g_count, n, *OBS_SHAPE), dtype=torch.uint8, pin_memory=pinned)
    frames = host.numpy()
    for g, env in enumerate(envs):
        frames[g] = env.reset(seed=seed)[0]

    def step(g: int, actions: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        obs, _, term, _, info = envs[g].step(actions)
        frames[g] = obs
        return term, info

    pool = ThreadPoolExecutor(g_count, thread_name_prefix="eval-env") if g_count > 1 else None
    try:
        for _ in range(max_steps):
            if (done_count >= quota).all():
                break
            obs = host.to(device, non_blocking=pinned)  # on the CPU: the buffer itself, no copy
            copied = None
            if pinned:
                copied = torch.cuda.Event()
                copied.record(torch.cuda.current_stream(device))
            actions = act(obs).cpu().numpy()
            if copied is not None:  # the envs overwrite the buffer next: its copy must be done
                copied.synchronize()  # (it is: reading the actions waited for it, unless act ignored obs)
            if pool is None:
                results = [step(g, actions[g]) for g in range(g_count)]
            else:
                results = [f.result() for f in [pool.submit(step, g, actions[g]) for g in range(g_count)]]
            ends = np.stack([term for term, _ in results])
            for g, (term, info) in enumerate(results):
                episode = np.full(n, -1, np.int64)
                if term.any():
                    counted = term & (done_count[g] < quota)
                    if skip is not None:
                        counted &= ~np.isin(info["prev_level_seed"], skip)
                    j = np.flatnonzero(counted)
                    idx = first[j] + done_count[g, j]
                    out["returns"][g, idx] = info["episode_return"][j]
                    out["lengths"][g, idx] = info["episode_length"][j]
                    out["level_seeds"][g, idx] = info["prev_level_seed"][j]
                    out["successes"][g, idx] = info["level_complete"][j]
                    done_count[g, j] += 1
                    episode[j] = idx
                if on_step is not None:
                    on_step({"group": g, "terminated": term, "episode": episode, **info})
            if on_steps is not None:
                on_steps(ends)
        else:
            raise RuntimeError(f"episodes did not finish within {max_steps} steps")
    finally:
        if pool is not None:
            pool.shutdown()
    return EpisodeStats(**out, env_slots=env_slots, env_episodes=env_episodes)
