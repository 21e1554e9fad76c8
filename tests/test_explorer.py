"""The exploration agent: lock-stepped full view, sequence replay through the GRU, resume."""
from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from agents.sampling import log_prob_entropy
from core.runtime import Runtime
from training import checkpointing
from training.explorer_learner import ExplorerLearner
from training.loop import train
from envs.full_view import FullViewPair, LockstepError
from envs.levels import get_split
from envs.procgen_vec import ProcgenVecEnv
from envs.split_batch import SplitBatch

EXPLORER = ["explorer.enabled=true", "ensemble.size=1", "env.game=chaser", "env.num_envs=4",
            "ppo.num_steps=48", "ppo.num_minibatches=2", "explorer.total_steps=384",
            "explorer.buffer_size=20"]


def make_explorer(cfg) -> ExplorerLearner:
    """The explorer's learner on the config's device and precision."""
    return ExplorerLearner(cfg, Runtime.resolve(cfg.device, cfg.network.precision))


def pair(game: str, agent_seed: int, full_seed: int, n: int = 8) -> FullViewPair:
    make = functools.partial(ProcgenVecEnv, game, levels=get_split("train"))
    p = FullViewPair(functools.partial(make, rand_seed=agent_seed), n)
    if full_seed != agent_seed:
        p.full = SplitBatch(lambda k: make(k, center_agent=False, rand_seed=full_seed), n)
    return p


def test_views_stay_in_lockstep_over_thousands_of_steps() -> None:
    p = pair("coinrun", 3, 3)
    obs, full = p.reset(seed=3)
    rng, ends, differ = np.random.default_rng(0), 0, 0
    for _ in range(3000):  # raises LockstepError on any divergence
        obs, full, _, term, _ = p.step(0, rng.integers(0, 15, p.num_envs))
        ends += term.sum()
        differ += (obs != full).any()
    assert ends > 20  # many episode ends and level changes were crossed
    assert differ > 2900  # coinrun's full view really is another picture than the agent's
    p.close()


def test_divergence_is_detected() -> None:
    p = pair("coinrun", 3, 4)
    with pytest.raises(LockstepError, match="disagree"):
        p.reset(seed=3)
        p.full.reset(seed=4)  # a twin that plays other levels
        for _ in range(2000):
            p.step(0, np.zeros(p.num_envs, np.int64))


def test_sequence_replay_equals_the_step_by_step_rollout(small_cfg) -> None:
    trainer = make_explorer(small_cfg(*EXPLORER))
    trainer.collect()  # the second rollout starts from a non-zero GRU state
    trainer.collect()
    ro = trainer.ro
    assert ro.dones.sum() > 0, "the test needs episode starts inside the rollout"
    assert trainer.start_state.abs().sum() > 0
    with torch.no_grad():
        logits, values, _ = trainer.pop(ro.obs, trainer.start_state, ro.dones)
    torch.testing.assert_close(values, ro.values, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(log_prob_entropy(logits, ro.actions)[0], ro.logprobs, rtol=1e-5, atol=1e-5)
    assert (ro.rewards >= 0).all() and (ro.rewards > 0).any()
    trainer.close()


def test_resets_matter_in_the_replay(small_cfg) -> None:
    """Replaying without the episode-start resets gives other values: the resets are real."""
    trainer = make_explorer(small_cfg(*EXPLORER))
    trainer.collect(), trainer.collect()
    with torch.no_grad():
        _, values, _ = trainer.pop(trainer.ro.obs, trainer.start_state, torch.zeros_like(trainer.ro.dones))
    assert not torch.allclose(values, trainer.ro.values, atol=1e-5)
    trainer.close()


def test_explorer_resume_gives_identical_next_actions(small_cfg) -> None:
    cfg = small_cfg(*EXPLORER, "explorer.total_steps=192")
    first = make_explorer(cfg)
    train(first, cfg, first.runtime)  # one update, then a checkpoint
    first.collect()
    second = make_explorer(cfg)
    assert checkpointing.restore(second) and second.global_step == first.global_step - 0
    second.collect()
    assert torch.equal(first.ro.actions, second.ro.actions)
    torch.testing.assert_close(first.ro.rewards, second.ro.rewards)
    first.close(), second.close()


def test_explorer_needs_whole_env_minibatches(small_cfg) -> None:
    with pytest.raises(ValueError, match="divisible"):
        make_explorer(small_cfg(*EXPLORER, "env.num_envs=3", "ppo.num_minibatches=2",
                                  "ppo.num_steps=32"))
