"""``ray: false`` with ``resources.side_by_side``: the jobs train at the same time in child
processes, into the same run directory, with the results, errors and resumption of the
in-process path."""
from __future__ import annotations

import pytest
import torch

from core.checkpoint import CheckpointError, list_checkpoints, load_checkpoint, save_checkpoint
import launch.run
from launch.run import train_run
from launch.side_by_side import JobFailed

pytestmark = pytest.mark.usefixtures("one_thread")  # the children use one thread each, too

BOTH = ["explorer.enabled=true", "explorer.total_steps=64", "resources.side_by_side=true"]


def newest(agent) -> dict:
    return load_checkpoint(list_checkpoints(agent.checkpoints)[0])  # newest first


def test_jobs_train_in_children_as_they_would_here(small_cfg, capfd, monkeypatch):
    def not_here(*args, **kwargs):
        raise AssertionError("a job trained in the test's own process")

    monkeypatch.setattr(launch.run, "train_job", not_here)  # children import their own
    cfg = small_cfg(*BOTH, "logging.progress=true", name="side")
    summary = train_run(cfg)
    monkeypatch.undo()
    assert {a["agent"]: a["steps"] for a in summary["agents"]} == {"member_0": 64, "explorer": 64}
    agents = [cfg.layout.member(0), cfg.layout.explorer]
    assert all(list(a.tb.glob("events.out.tfevents.*")) for a in agents)
    err = capfd.readouterr().err  # off a terminal: a line per job (here, their final ones)
    assert "member_0: DONE, 64 / 64 steps" in err and "explorer: DONE, 64 / 64 steps" in err

    here = small_cfg(*BOTH, "resources.side_by_side=false", name="here")
    train_run(here)
    for a, b in zip(agents, [here.layout.member(0), here.layout.explorer]):
        ours, theirs = newest(a), newest(b)
        for k in ours["model"]:  # same seeds, one thread each: the same numbers
            assert torch.equal(ours["model"][k], theirs["model"][k]), f"{a.name}: {k}"


def test_a_failing_job_stops_the_run_and_a_rerun_finishes_it(small_cfg):
    cfg = small_cfg(*BOTH, "debug.fail_at_update=1", name="fail")
    with pytest.raises(JobFailed, match="InjectedFault.*re-run the same command to resume"):
        train_run(cfg)
    for _ in range(2):  # a fault fires once per agent; a job stopped before its own fires it now
        try:
            summary = train_run(cfg)
            break
        except JobFailed as e:
            assert "InjectedFault" in str(e)
    assert {a["agent"]: a["steps"] for a in summary["agents"]} == {"member_0": 64, "explorer": 64}

    # An error that retrying cannot fix keeps its type and names the job (train.py: rc 2).
    ckpt = newest(cfg.layout.member(0))
    save_checkpoint(cfg.layout.member(0).checkpoints, ckpt["step"], {**ckpt, "network": {**ckpt["network"], "hidden": 7}})
    longer = small_cfg(*BOTH, "ppo.total_steps=128", "explorer.total_steps=128", name="fail")
    with pytest.raises(CheckpointError, match="member_0: checkpoint network"):
        train_run(longer)
    # The other job was stopped (or finished first): its newest checkpoint is a whole iteration's.
    assert newest(cfg.layout.explorer)["step"] in (64, 96, 128)
