"""Ctrl-C in the middle of an update: the run stops at the end of that iteration, checkpoints it,
and a re-run continues exactly where an uninterrupted run would be."""
from __future__ import annotations

import signal

import pytest
import torch

from core.checkpoint import checkpoint_steps, load_latest
from core.runtime import Runtime
from launch.jobs import Job, train_job
from launch.run import train_run
from training.population_learner import PopulationLearner

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny batches on a shared 2-core CPU

ARGS = ("ppo.total_steps=128", "logging.checkpoint_interval=4")  # one member, 4 updates of 32 steps


def _final_models(cfg) -> list[dict[str, torch.Tensor]]:
    return [load_latest(cfg.layout.member(0).checkpoints)["model"]]


def test_sigint_inside_learn_resumes_exactly(small_cfg, monkeypatch):
    reference = small_cfg(*ARGS, name="uninterrupted")
    train_run(reference)

    cfg = small_cfg(*ARGS, name="interrupted")
    learn, calls = PopulationLearner.learn, {"n": 0}

    def interrupted_learn(self):
        calls["n"] += 1
        if calls["n"] == 2:  # in the middle of the second update (raise_signal: to this thread, at once)
            signal.raise_signal(signal.SIGINT)
        return learn(self)

    monkeypatch.setattr(PopulationLearner, "learn", interrupted_learn)
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        train_run(cfg)
    monkeypatch.undo()
    # the iteration in flight was finished and saved; nothing later was
    assert checkpoint_steps(cfg.layout.member(0).checkpoints) == [64]
    assert signal.getsignal(signal.SIGINT) is handler  # the caller's handler is back

    train_run(cfg)
    for resumed, straight in zip(_final_models(cfg), _final_models(reference)):
        for k in straight:
            assert torch.equal(resumed[k], straight[k]), k


def test_sigint_after_the_checkpoint_decision_still_checkpoints_that_iteration(small_cfg):
    """A Ctrl-C that lands after the loop decided not to checkpoint an iteration (here: while the
    iteration is reported) still stops with that iteration saved, not the one before it."""
    cfg = small_cfg(*ARGS, name="late")
    runtime = Runtime.from_config(cfg)

    def report(info):
        if info["steps"] == 64:  # update 2 of 4: no checkpoint due (logging.checkpoint_interval=4)
            assert not info["checkpoint"]
            signal.raise_signal(signal.SIGINT)

    with pytest.raises(KeyboardInterrupt):
        train_job(cfg, Job("members", (0,)), runtime, progress=False, on_iteration=report)
    assert checkpoint_steps(cfg.layout.member(0).checkpoints) == [64]

