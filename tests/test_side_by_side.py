"""``ray: false`` with ``resources.side_by_side``: the jobs train at the same time in child
processes, into the same run directory, with the results, errors, progress, Ctrl-C and resumption
of the in-process path."""
from __future__ import annotations

import multiprocessing
import os
import signal

import pytest
import torch

import launch.jobs
import launch.side_by_side
import train as train_cli
from core.checkpoint import checkpoint_steps, list_checkpoints, load_checkpoint, save_checkpoint
from launch.run import train_run
from launch.trial_table import JobTable

pytestmark = pytest.mark.usefixtures("one_thread")  # the children use one thread each, too

BOTH = ["explorer.enabled=true", "explorer.total_steps=64", "resources.side_by_side=true"]


def newest(agent) -> dict:
    return load_checkpoint(list_checkpoints(agent.checkpoints)[0])  # newest first


def no_job_trains_here(monkeypatch) -> None:
    """Every path that trains a job in this process builds its learner through launch.jobs; the
    children import their own, unpatched."""
    def here(*args, **kwargs):
        raise AssertionError("a job trained in the test's own process")

    monkeypatch.setattr(launch.jobs, "build_learner", here)


def test_jobs_train_in_children_as_they_would_here(small_cfg, capfd, monkeypatch):
    no_job_trains_here(monkeypatch)
    monkeypatch.setattr("launch.trial_table.LINE_INTERVAL_S", 0.0)  # a line per job at every report
    cfg = small_cfg(*BOTH, "logging.progress=true", name="side")
    summary = train_run(cfg)
    monkeypatch.undo()
    assert {a["agent"]: a["steps"] for a in summary["agents"]} == {"member_0": 64, "explorer": 64}
    assert all(a["job_wall_s"] > 0 for a in summary["agents"])
    agents = [cfg.layout.member(0), cfg.layout.explorer]
    assert all(list(a.tb.glob("events.out.tfevents.*")) for a in agents)
    err = capfd.readouterr().err  # off a terminal: lines of the job table, fed by the children's reports
    for job in ("member_0", "explorer"):
        assert f"{job}: RUNNING, 32 / 64 steps" in err and f"{job}: DONE, 64 / 64 steps" in err
        assert f"{job}: 0 / 64 steps" not in err  # no child draws its own progress

    here = small_cfg(*BOTH, "resources.side_by_side=false", name="here")
    train_run(here)
    for a, b in zip(agents, [here.layout.member(0), here.layout.explorer]):
        ours, theirs = newest(a), newest(b)
        for k in ours["model"]:  # same seeds, one thread each: the same numbers
            assert torch.equal(ours["model"][k], theirs["model"][k]), f"{a.name}: {k}"


def test_a_failing_job_stops_the_other_and_a_rerun_finishes_both(small_cfg, small_cli_args, capsys):
    long = ["explorer.total_steps=512"]  # far more than the member needs to reach its fault
    cfg = small_cfg(*BOTH, *long, "debug.fail_at_update=1", name="fail")
    cfg.layout.explorer.path.mkdir(parents=True)
    (cfg.layout.explorer.path / ".fault_injected").touch()  # only the member fails
    args = small_cli_args(*BOTH, *long, "debug.fail_at_update=1", "name=fail")
    assert train_cli.main(args) == 1
    err = capsys.readouterr().err
    assert "error: member_0 failed (InjectedFault" in err and "re-run the same command to resume" in err
    assert "Traceback" in err and 'loop.py", line' in err  # the child's traceback
    assert not multiprocessing.active_children()
    assert checkpoint_steps(cfg.layout.member(0).checkpoints) == [32]
    stopped = checkpoint_steps(cfg.layout.explorer.checkpoints)
    assert all(s % 32 == 0 and s < 512 for s in stopped)  # whole iterations, stopped early

    summary = train_run(cfg)  # the same command: both resume and finish
    assert {a["agent"]: a["steps"] for a in summary["agents"]} == {"member_0": 64, "explorer": 512}

    # An error that retrying cannot fix ends the run as in-process: "error: ...", rc 2.
    ckpt = newest(cfg.layout.member(0))
    save_checkpoint(cfg.layout.member(0).checkpoints, ckpt["step"],
                    {**ckpt, "network": {**ckpt["network"], "hidden": 7}})
    longer = small_cli_args(*BOTH, "ppo.total_steps=128", "explorer.total_steps=4096", "name=fail")
    assert train_cli.main(longer) == 2
    assert "error: member_0: checkpoint network" in capsys.readouterr().err
    assert not multiprocessing.active_children()
    assert max(checkpoint_steps(cfg.layout.explorer.checkpoints)) < 4096  # stopped, not finished


def test_ctrl_c_checkpoints_every_job_then_interrupts(small_cfg, monkeypatch):
    class CtrlCOnceBothRun(JobTable):
        """Ctrl-C, once both jobs have reported an iteration: at a terminal, only this process
        gets it (the children have their own process group)."""

        sent = False

        def show(self, rows):
            if not self.sent and all(state == "RUNNING" for _, state, *_ in rows):
                self.sent = True
                os.kill(os.getpid(), signal.SIGINT)

    no_job_trains_here(monkeypatch)
    monkeypatch.setattr(launch.side_by_side, "JobTable", CtrlCOnceBothRun)
    budget = ["ppo.total_steps=8192", "explorer.total_steps=8192"]
    cfg = small_cfg(*BOTH, *budget, "logging.progress=true", "logging.checkpoint_interval=1000", name="int")
    with pytest.raises(KeyboardInterrupt):
        train_run(cfg)
    assert not multiprocessing.active_children()
    for agent in (cfg.layout.member(0), cfg.layout.explorer):
        # No checkpoint is due before the end: this one is the iteration in flight at Ctrl-C.
        (step,) = checkpoint_steps(agent.checkpoints)
        assert 0 < step < 8192 and step % 32 == 0
