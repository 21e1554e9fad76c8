"""Non-finite numbers: configs that would normalise advantages over one sample are refused, and a
NaN or infinite loss or parameter stops the run with an error naming the agent and update, before
anything of that update is logged or checkpointed (training/loop.py ``check_finite``)."""
from __future__ import annotations

import math

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import train
from core.checkpoint import checkpoint_steps, load_latest
from core.config import ConfigError
from launch.run import train_run
from training.learner import NonFiniteError
from training.population_learner import PopulationLearner

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 4 * 8


@pytest.mark.parametrize("engine", ["native", "sb3"])
@pytest.mark.parametrize("overrides, keys", [
    # the input: 2 envs x 4 steps in 8 minibatches of one sample each
    (["env.num_envs=2", "ppo.num_steps=4", "ppo.num_minibatches=8", "ppo.norm_adv=minibatch"],
     "env.num_envs * ppo.num_steps / ppo.num_minibatches = 1 sample"),
    (["env.num_envs=1", "ppo.num_steps=1", "ppo.num_minibatches=1", "ppo.norm_adv=batch"],
     "env.num_envs * ppo.num_steps = 1 sample"),
])
def test_advantages_of_one_sample_are_refused_before_work(small_cfg, engine, overrides, keys):
    with pytest.raises(ConfigError, match=keys.replace("*", r"\*")):
        small_cfg(f"engine={engine}", *overrides)


def test_two_samples_or_no_normalisation_are_allowed(small_cfg):
    small_cfg("env.num_envs=2", "ppo.num_steps=4", "ppo.num_minibatches=4", "ppo.norm_adv=minibatch")
    small_cfg("env.num_envs=2", "ppo.num_steps=4", "ppo.num_minibatches=8", "ppo.norm_adv=none")


def test_a_non_finite_parameter_stops_the_run_and_keeps_the_last_good_checkpoint(small_cfg, monkeypatch):
    """member_1's weights turn NaN in update 3 of 4: the run stops naming member_1 and update 3;
    nothing of update 3 is logged or saved; a re-run without the fault resumes from step 64."""
    cfg = small_cfg("ensemble.size=2", f"ppo.total_steps={4 * STEPS}")
    learn = PopulationLearner.learn

    def poisoned(self):
        metrics = learn(self)
        if self.update == 2:  # the third update (``update`` counts those done before it)
            with torch.no_grad():
                self.params[0][1].fill_(math.nan)
        return metrics

    monkeypatch.setattr(PopulationLearner, "learn", poisoned)
    with pytest.raises(NonFiniteError, match=r"member_1: non-finite parameters in update 3 of 4 \(steps 64 to "
                                             r"96\); .* its newest checkpoint \(step 64\) is kept"):
        train_run(cfg)
    for m in (0, 1):
        agent = cfg.layout.member(m)
        assert checkpoint_steps(agent.checkpoints)[0] == 2 * STEPS
        assert all(v.isfinite().all() for v in load_latest(agent.checkpoints)["model"].values())
        acc = EventAccumulator(str(agent.tb))
        acc.Reload()
        assert [e.step for e in acc.Scalars("charts/SPS")] == [STEPS, 2 * STEPS]

    monkeypatch.setattr(PopulationLearner, "learn", learn)
    train_run(cfg)
    assert checkpoint_steps(cfg.layout.member(1).checkpoints)[0] == 4 * STEPS


@pytest.mark.parametrize("engine", ["native", "sb3"])
def test_a_diverging_run_ends_with_a_clear_error(small_cli_args, capsys, engine):
    """A learning rate of 1e20 overflows the network in the first update: train.py says which
    agent and update, exits 2, and saves nothing."""
    rc = train.main(small_cli_args(f"engine={engine}", "ppo.lr=1e20"))
    err = capsys.readouterr().err
    assert rc == 2
    assert "error: member_0: non-finite" in err and "in update 1 of 2" in err and "it has no checkpoint yet" in err
