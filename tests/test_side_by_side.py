"""``ray: false`` with ``resources.side_by_side``: the jobs train at the same time in child
processes, into the same run directory, with the results, errors, progress, Ctrl-C and resumption
of the in-process path."""
from __future__ import annotations

import multiprocessing
import signal

import pytest
import torch

import launch.jobs
import launch.side_by_side
import train as train_cli
from core.checkpoint import checkpoint_steps, list_checkpoints, load_checkpoint, save_checkpoint
from launch.run import train_run
from launch.trial_table import JobTable
from tests import faults
from tests.faults import Fault

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


def arm_children(monkeypatch, spec) -> None:
    """The children this process starts (they inherit its environment) apply the faults of ``spec``."""
    for k, v in faults.environment(spec).items():
        monkeypatch.setenv(k, v)


@pytest.mark.slow
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


@pytest.mark.slow
def test_a_failing_job_stops_the_other_and_a_rerun_finishes_both(small_cfg, small_cli_args, capsys, monkeypatch,
                                                                 tmp_path):
    """The member crashes after its update 1; the explorer holds after its update 1 until it is
    stopped (test faults, tests/faults.py), so it is stopped before its budget whatever the
    machine's speed: at update 2 at the latest (the iteration in flight when the SIGINT came)."""
    spec = tmp_path / "fault.json"
    arm_children(monkeypatch, spec)
    faults.arm(spec, Fault("crash", after_update=1, agents=("member_0",)),
               Fault("hold", after_update=1, agents=("explorer",)))
    long = ["explorer.total_steps=128"]
    cfg = small_cfg(*BOTH, *long, name="fail")
    args = small_cli_args(*BOTH, *long, "name=fail")
    assert train_cli.main(args) == 1
    err = capsys.readouterr().err
    assert "error: member_0 failed (InjectedFault" in err and "re-run the same command to resume" in err
    assert "Traceback" in err and 'loop.py", line' in err  # the child's traceback
    assert not multiprocessing.active_children()
    assert checkpoint_steps(cfg.layout.member(0).checkpoints) == [32]
    stopped = checkpoint_steps(cfg.layout.explorer.checkpoints)
    assert set(stopped) <= {32, 64}  # whole iterations, stopped early

    spec.unlink()  # no faults from here on
    summary = train_run(cfg)  # the same command: both resume and finish
    assert {a["agent"]: a["steps"] for a in summary["agents"]} == {"member_0": 64, "explorer": 128}

    # An error that retrying cannot fix ends the run as in-process: "error: ...", rc 2. The
    # explorer holds after update 5 (it resumes at 4) until the member's error stops it.
    ckpt = newest(cfg.layout.member(0))
    save_checkpoint(cfg.layout.member(0).checkpoints, ckpt["step"],
                    {**ckpt, "network": {**ckpt["network"], "hidden": 7}})
    faults.arm(spec, Fault("hold", after_update=5, agents=("explorer",)))
    longer = small_cli_args(*BOTH, "ppo.total_steps=128", "explorer.total_steps=256", "name=fail")
    assert train_cli.main(longer) == 2
    assert "error: member_0: checkpoint network" in capsys.readouterr().err
    assert not multiprocessing.active_children()
    assert max(checkpoint_steps(cfg.layout.explorer.checkpoints)) <= 6 * 32  # stopped, not finished


@pytest.mark.slow
def test_ctrl_c_checkpoints_every_job_then_interrupts(small_cfg, monkeypatch, tmp_path):
    """Both jobs hold after their update 1 (a test fault) until the Ctrl-C, sent once both hold:
    each trains its iteration in flight, update 2, checkpoints it and stops."""
    spec = tmp_path / "fault.json"
    arm_children(monkeypatch, spec)
    faults.arm(spec, Fault("hold", after_update=1))
    sent = []

    class CtrlCOnceBothHold(JobTable):
        """At a terminal, only this process gets Ctrl-C (the children have their own process group)."""

        def show(self, rows):
            if not sent and all(faults.held_file(spec, job).exists() for job in ("member_0", "explorer")):
                sent.append(True)
                signal.raise_signal(signal.SIGINT)

    no_job_trains_here(monkeypatch)
    monkeypatch.setattr(launch.side_by_side, "JobTable", CtrlCOnceBothHold)
    budget = ["ppo.total_steps=128", "explorer.total_steps=128"]
    cfg = small_cfg(*BOTH, *budget, "logging.progress=true", "logging.checkpoint_interval=1000", name="int")
    with pytest.raises(KeyboardInterrupt):
        train_run(cfg)
    assert sent
    assert not multiprocessing.active_children()
    for agent in (cfg.layout.member(0), cfg.layout.explorer):
        # No checkpoint is due before the end (update 4): this one is the iteration in flight at Ctrl-C.
        assert checkpoint_steps(agent.checkpoints) == [64]


# ---- the job table's held-out columns: the splits the run evaluates, named -----------------------

# A job's report after an iteration with held-out evaluation (train's ``on_iteration`` info): the
# quickstart evaluates on train (its one training level) and test-full (unseen levels).
QUICKSTART_INFO = {"steps": 2048, "sps": 1000.0, "episodic_return": 4.0, "checkpoint": False, "done": False,
                   "heldout": {"train": [9.0, 10.0, 8.0], "test-full": [1.0, 2.0, 3.0]}}


def quickstart(tmp_path, *overrides):
    from core.config import load_config
    from tests.helpers import QUICKSTART

    return load_config(QUICKSTART, [f"runs_dir={tmp_path}", *overrides])


def test_job_table_shows_the_held_out_split_the_run_evaluates(tmp_path, capsys, monkeypatch):
    """Side by side (ray=false): the quickstart's held-out column is test-full's return, headed
    test-full, in the live table and in the lines printed off a terminal."""
    cfg = quickstart(tmp_path, "ray=false")
    table = JobTable(cfg, launch.jobs.plan(cfg), "quickstart")
    row = table.row("members_0-2", "RUNNING", launch.jobs.report_metrics(QUICKSTART_INFO), 0)
    assert row == ("members_0-2", "RUNNING", f"2,048 / {cfg.final_step(False):,}", "1,000", "4.00", "2.00", "0")
    headers = [c.header for c in table.render([row]).columns]
    assert headers == ["agent", "state", "steps", "SPS", "return", "test-full", "restarts"]
    monkeypatch.setattr("launch.trial_table.LINE_INTERVAL_S", 0.0)
    table.show([row])
    assert (f"members_0-2: RUNNING, 2,048 / {cfg.final_step(False):,} steps, 1,000 steps/s, return 4.00, "
            "test-full 2.00, restarts 0") in capsys.readouterr().err


@pytest.mark.parametrize("splits, shown", [("[train,test-full]", ["test-full"]),
                                           ("[train,test,test-full]", ["test", "test-full"]),
                                           ("[train]", ["train"])])
def test_ray_trial_table_shows_every_held_out_split(tmp_path, capsys, monkeypatch, splits, shown):
    """Ray: each held-out split of logging.eval_splits but train (train if it is the only one)
    gets a column named after it, filled from the trial's last report."""
    pytest.importorskip("ray.tune")
    from types import SimpleNamespace

    from launch.ray_trials import TrialTable

    cfg = quickstart(tmp_path, f"logging.eval_splits={splits}")
    table = TrialTable(cfg, launch.jobs.plan(cfg))
    info = {**QUICKSTART_INFO, "heldout": {"train": [9.0], "test": [5.0], "test-full": [2.0]}}
    info["heldout"] = {s: v for s, v in info["heldout"].items() if s in cfg.logging.eval_splits}
    trial = SimpleNamespace(config={"job": "explorer"}, status="RUNNING", num_failures=0,
                            last_result=launch.jobs.report_metrics(info))
    values = {"train": "9.00", "test": "5.00", "test-full": "2.00"}
    (row,) = table.rows([trial])
    assert row[5:-1] == tuple(values[s] for s in shown)
    assert [c.header for c in table.render([row]).columns][5:-1] == shown
    monkeypatch.setattr("launch.trial_table.LINE_INTERVAL_S", 0.0)
    table.on_step_end(0, [trial])
    line = "".join(f", {s} {values[s]}" for s in shown)
    assert f"steps/s, return 4.00{line}, restarts 0" in capsys.readouterr().err
