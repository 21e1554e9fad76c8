"""PPO learns: a short training run through PopulationLearner beats the random policy clearly.

The task is one maze level (env.num_levels=1, start_level=22), chosen because a uniformly random
policy finds the exit within the 500-step limit in only about a third of its episodes (mean
return about 3.6 of 10), while the path is short enough for the small CNN to learn it: with
seeds 0-3 training solved the level (return 9.8-10) by 70k-95k env steps; the run below takes
131k steps, about 40 s on the 2-core CPU.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from agents.acting import ActionPicker
from core.runtime import Runtime
from envs.make import make_env
from evaluation.episodes import run_episodes
from tests.helpers import make_small_cfg
from training.loop import train
from training.population_learner import PopulationLearner

pytestmark = pytest.mark.slow

LEVEL = 22
TOTAL_STEPS = 131_072  # 64 updates of 32 envs x 64 steps
EPISODES = 64
EVAL_SEED = 777


def evaluate(cfg, act) -> np.ndarray:
    env = make_env(cfg.env, 32, "train", rand_seed=EVAL_SEED)
    try:
        with torch.no_grad():
            stats = run_episodes(act, [env], EPISODES, torch.device("cpu"), seed=EVAL_SEED)
    finally:
        env.close()
    assert (stats.level_seeds == LEVEL).all()
    return stats.returns[0]


def test_ppo_learns_a_maze_level(tmp_path):
    cfg = make_small_cfg(
        tmp_path,
        "env.num_levels=1", f"env.start_level={LEVEL}", "env.num_envs=32",
        "ppo.num_steps=64", "ppo.num_minibatches=4", "ppo.epochs=3", "ppo.gamma=0.99",
        f"ppo.total_steps={TOTAL_STEPS}", "logging.checkpoint_interval=1000", "seed=0",
        name="learn",
    )
    g = torch.Generator().manual_seed(0)
    uniform = lambda obs: torch.randint(0, 15, obs.shape[:2], generator=g)
    random_returns = evaluate(cfg, uniform)

    runtime = Runtime.resolve(cfg.device, cfg.network.precision)
    trainer = PopulationLearner(cfg, [0], runtime)
    try:
        summary = train(trainer, cfg, runtime)
        pick = ActionPicker(trainer.seeds, torch.device("cpu"), salt=99)
        trained_returns = evaluate(cfg, lambda obs: pick(trainer.pop(obs)[0]))
    finally:
        trainer.close()
    assert summary["steps"] >= TOTAL_STEPS
    print(f"random policy {random_returns.mean():.2f}, trained {trained_returns.mean():.2f}")
    assert random_returns.mean() < 6.0, "the level should be hard for a random policy"
    assert trained_returns.mean() >= random_returns.mean() + 3.0, (
        f"PPO did not learn: random {random_returns.mean():.2f}, trained {trained_returns.mean():.2f}"
    )
