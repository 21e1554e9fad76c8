"""Held-out curves during training: every agent of a job plays whole episodes on each configured
split (``logging.eval_splits``), with its own sampling stream, on the same levels as its peers."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from agents.acting import ActionPicker, PopulationActor
from agents.population import Population
from core.config import Config
from envs.fingerprints import unseen_levels
from envs.make import make_env
from evaluation.episodes import run_episodes


@dataclass
class Heldout:
    returns: np.ndarray  # (agents, episodes)
    successes: np.ndarray  # (agents, episodes)


@torch.no_grad()
def evaluate_heldout(cfg: Config, pop: Population, seeds: list[int], update: int,
                     device: torch.device) -> dict[str, Heldout]:
    """``logging.eval_episodes`` episodes per agent per split, collected with per-env quotas.

    Levels and sampling streams depend on the update number only, so curves are comparable across
    agents and reproducible across resumes; each split starts from fresh streams and states.
    """
    log, results = cfg.logging, {}
    n = min(cfg.env.num_envs, log.eval_episodes)
    seed = 10_000 + update
    for split in log.eval_splits:
        # eval.unseen: episodes on a level equal to a training level are not counted (envs/levels.py).
        skip = unseen_levels(cfg.env, split, cfg.eval.unseen, num_envs=n, seed=seed, episodes=log.eval_episodes)
        actor = PopulationActor(pop, n, ActionPicker(seeds, device, salt=3 + update), device)
        envs = [make_env(cfg.env, n, split, rand_seed=seed) for _ in seeds]
        try:
            # Every agent's batch steps in a worker thread; the episode ends of all agents reset
            # their recurrent state with one copy per step (``slice(None)``: every member at once).
            stats = run_episodes(lambda obs: actor(obs)[0], envs, log.eval_episodes, device, seed=seed,
                                 on_steps=lambda ends: actor.episode_ended(slice(None), ends),
                                 skip_levels=skip.excluded)
        finally:
            for env in envs:
                env.close()
        results[split] = Heldout(stats.returns, stats.successes)
    return results
