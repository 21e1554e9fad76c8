"""Training through Ray Tune (launch/ray_trials.py): placement, restarts, resuming a killed driver.

A local Ray (2 CPUs) is started once for the module; a trial of one member or the explorer asks for
one CPU (its one env batch; torch gets half a CPU's worth: one thread), so two run at once on this
2-core machine. Placement on several nodes and a node's death: tests/test_cluster.py.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from core.checkpoint import checkpoint_steps, list_checkpoints, load_checkpoint, load_latest, save_checkpoint
from core.config import ConfigError
from core.run_layout import AgentDir
from launch.jobs import plan
from launch.placement import Request, place
from launch.ray_trials import Trial, check_fits, check_workers_fit, trial_bundles
from launch.run import train_run
from tests import faults, processes
from tests.faults import Fault
from tests.helpers import QUICKSTART, SMALL, logged_steps, make_small_cfg

ROOT = Path(__file__).resolve().parents[1]
STEP = 8 * 16  # env steps per update below
RAY = ["ray=true", "env.num_envs=8", "ppo.num_steps=16", "ppo.num_minibatches=2", "resources.shard_cpus=0.5",
       "resources.explorer_cpus=0.5", "explorer.enabled=true", "explorer.total_steps=512"]


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """Ray for the module. Its workers inherit this process's environment when Ray starts: they
    install the test faults (tests/faults.py) and read a spec file that each test arms (``fault``)."""
    ray = pytest.importorskip("ray")
    spec = tmp_path_factory.mktemp("faults") / "fault.json"
    armed = faults.environment(spec)
    saved = {k: os.environ.get(k) for k in ("RAY_CHDIR_TO_TRIAL_DIR", *armed)}
    os.environ.update({"RAY_CHDIR_TO_TRIAL_DIR": "0", **armed})
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    yield spec
    ray.shutdown()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def fault(local_ray):
    """``fault(Fault(...), ...)`` arms faults for this test's trials; disarmed afterwards."""
    yield lambda *f: faults.arm(local_ray, *f)
    local_ray.unlink(missing_ok=True)


def assert_complete_curve(agent: AgentDir, total: int) -> None:
    assert logged_steps(agent) == list(range(STEP, total + 1, STEP)), "gap or repeated step"


@pytest.mark.slow  # Ray
def test_ray_trains_members_and_explorer(local_ray, tmp_path):
    cfg = make_small_cfg(tmp_path, *RAY, "ensemble.size=2", "population.size=1", "ppo.total_steps=512",
                         "logging.eval_interval=2", "logging.eval_episodes=4")
    summary = train_run(cfg)
    assert [j.name for j in plan(cfg)] == ["member_0", "member_1", "explorer"]
    for d in (cfg.layout.member(0), cfg.layout.member(1), cfg.layout.explorer):
        assert max(checkpoint_steps(d.checkpoints)) == 512
        assert_complete_curve(d, 512)
        assert logged_steps(d, "eval/test_return") == [0, 256, 512]
    assert {a["agent"]: a["steps"] for a in summary["agents"]} == {"member_0": 512, "member_1": 512, "explorer": 512}
    assert all("test_return" in a for a in summary["agents"])
    assert cfg.layout.summary.is_file()
    experiments = list(cfg.layout.ray.iterdir())
    assert len(experiments) == 1 and len(list(experiments[0].glob("run_trial_*"))) == 3


@pytest.mark.slow  # Ray
def test_crashed_trial_is_restarted_from_its_checkpoint(fault, tmp_path):
    """Every agent crashes once after update 3 (checkpoints at 2 and 4): Tune restarts it, it
    resumes at update 2, and its curve has every step once."""
    cfg = make_small_cfg(tmp_path, *RAY, "ppo.total_steps=640", "explorer.total_steps=640",
                         "logging.checkpoint_interval=2", "resources.max_failures=1")
    fault(Fault("crash", after_update=3))
    train_run(cfg)
    for d in (cfg.layout.member(0), cfg.layout.explorer):
        assert (d.path / ".fault_injected").exists()
        assert max(checkpoint_steps(d.checkpoints)) == 640
        assert_complete_curve(d, 640)
        assert len(list(d.tb.glob("events.*"))) == 2  # the first attempt and the restarted one


@pytest.mark.slow  # Ray
def test_trial_failing_too_often_is_an_error_and_keeps_checkpoints(fault, tmp_path):
    cfg = make_small_cfg(tmp_path, *RAY, "explorer.enabled=false", "ppo.total_steps=512",
                         "logging.checkpoint_interval=2", "resources.max_failures=0")
    fault(Fault("crash", after_update=3, agents=("member_0",)))
    with pytest.raises(RuntimeError, match="re-run the same command"):
        train_run(cfg)
    assert max(checkpoint_steps(cfg.layout.member(0).checkpoints)) == 2 * STEP
    assert list(cfg.layout.ray.rglob("error.txt"))  # how Tune records a failed attempt (see below)
    train_run(cfg)  # the fault fires once per agent: a re-run finishes the job
    assert_complete_curve(cfg.layout.member(0), 512)


@pytest.mark.slow  # a driver process and Ray
def test_killed_driver_resumes_without_redoing_finished_agents(tmp_path):
    """SIGKILL the driver once the member is done and the explorer is held after its update 2
    (a test fault: it cannot finish, however slow or fast the machine); once every process of the
    killed run is gone, re-run it without the fault."""
    budgets = ["ppo.total_steps=256", "explorer.total_steps=768", "logging.checkpoint_interval=2"]
    args = [sys.executable, str(ROOT / "train.py"), "--config", str(QUICKSTART), f"runs_dir={tmp_path}",
            *SMALL, *RAY, *budgets]
    cfg = make_small_cfg(tmp_path, *RAY, *budgets, name="quickstart")
    member, explorer = cfg.layout.member(0), cfg.layout.explorer
    spec = faults.arm(tmp_path / "fault.json", Fault("hold", after_update=2, agents=("explorer",)))
    env = {k: v for k, v in os.environ.items() if k != faults.ENV}
    driver = subprocess.Popen(args, cwd=ROOT, env={**env, **faults.environment(spec)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # The deadline only bounds a failure: the member finishes and the explorer holds at last.
        # The explorer's curve up to its checkpoint must be on disk before the kill (its
        # TensorBoard writer appends from a thread).
        deadline = time.monotonic() + 600
        while not (checkpoint_steps(member.checkpoints)[:1] == [256] and faults.held_file(spec, "explorer").exists()
                   and logged_steps(explorer) == [STEP, 2 * STEP]):
            assert driver.poll() is None, "driver ended before the kill"
            assert time.monotonic() < deadline, "the member did not finish, or the explorer did not hold"
            time.sleep(0.2)
        trials = processes.processes(faults.recorded_pids(spec))  # the workers that trained (if still running)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    assert int(faults.held_file(spec, "explorer").read_text()) in trials
    # Ray ends the orphaned trial workers (its agents, which write nothing here, linger for a
    # minute): wait for that, however long it takes.
    assert not processes.wait_gone(trials, timeout_s=300), "trial workers of the killed run still running"
    assert checkpoint_steps(explorer.checkpoints) == [2 * STEP]
    member_files = {p: p.stat().st_mtime_ns for p in member.path.rglob("*") if p.is_file()}

    rerun = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "member_0: already trained to its budget, skipped" in rerun.stderr
    assert {p: p.stat().st_mtime_ns for p in member.path.rglob("*") if p.is_file()} == member_files
    assert max(checkpoint_steps(explorer.checkpoints)) == 768
    assert_complete_curve(explorer, 768)


def test_resources_auto_share_the_gpus(tmp_path):
    cfg = make_small_cfg(tmp_path, "ensemble.size=4", "population.size=2", "explorer.enabled=true")
    jobs = [(cfg, j) for j in plan(cfg)]
    assert [j.name for _, j in jobs] == ["members_0-1", "members_2-3", "explorer"]
    assert place(jobs, gpus=0)[0] == Request(cpus=2, gpus=0.0, threads=1)  # 2 members' env batches
    assert [r.gpus for r in place(jobs, gpus=1)] == [0.3333] * 3
    assert [r.gpus for r in place(jobs, gpus=2)] == [0.5, 0.5, 1.0]  # the explorer alone, all at once
    assert [r.gpus for r in place(jobs, gpus=8)] == [1.0] * 3
    cfg.resources.shard_gpus = 0.25
    assert [r.gpus for r in place(jobs, gpus=1)] == [0.25, 0.25, 0.3333]


@pytest.mark.slow  # child processes
def test_jobs_trained_one_after_another_here_use_their_own_torch_threads(small_cfg, one_thread):
    """``resources.*_cpus`` are a job's torch threads whichever way it trains: here, one after
    another in this process (which runs one thread), the weights equal those of the same jobs
    trained side by side in child processes of two threads each. The thread count changes the
    order in which a CPU sums, so with this process's one thread they would differ."""
    both = ["explorer.enabled=true", "explorer.total_steps=64", "resources.shard_cpus=2", "resources.explorer_cpus=2"]
    children = small_cfg(*both, "resources.side_by_side=true", name="children")
    here = small_cfg(*both, "resources.side_by_side=false", name="here")
    train_run(children)
    train_run(here)
    for agent in ("member_0", "explorer"):
        got, want = (load_latest(run.layout.root / agent / "checkpoints") for run in (here, children))
        assert got["step"] == want["step"] == 64
        assert all(torch.equal(got["model"][k], want["model"][k]) for k in want["model"]), agent


def test_rllib_trials_reserve_their_env_runners_and_learners(tmp_path):
    cfg = make_small_cfg(tmp_path, "engine=rllib", "rllib.num_env_runners=2", "rllib.num_learners=1",
                         "rllib.num_gpus_per_learner=0.5", "explorer.enabled=true")
    member, explorer = plan(cfg)
    request = Request(cpus=1.0, gpus=0.0, threads=1)
    assert trial_bundles(cfg, member, request) == [
        {"CPU": 1.0, "GPU": 0.0}, {"CPU": 1.0}, {"CPU": 1.0}, {"CPU": 1.0, "GPU": 0.5}]
    assert trial_bundles(cfg, explorer, request) == [{"CPU": 1.0, "GPU": 0.0}]


def test_requests_that_no_node_can_hold_fail_before_training(tmp_path):
    cfg = make_small_cfg(tmp_path, "resources.shard_cpus=4")
    trial = Trial(cfg, plan(cfg)[0])
    node = {"CPU": 2.0, "GPU": 0.0}
    with pytest.raises(ConfigError, match=r"t/member_0 asks for 4 CPUs.*resources.shard_cpus"):
        check_fits(trial, {"CPU": 4.0, "GPU": 0.0}, [node])
    check_fits(trial, {"CPU": 2.0, "GPU": 0.0}, [node])
    cfg.device = "cuda"
    with pytest.raises(ConfigError, match="gets no GPU"):
        check_fits(trial, {"CPU": 1.0, "GPU": 0.0}, [node])


def test_rllib_workers_that_the_cluster_cannot_hold_fail_before_training(tmp_path):
    """engine=rllib rllib.num_env_runners=2 on a 2-CPU machine: 3 CPUs for the trial's placement
    group, which Tune would wait for forever."""
    cfg = make_small_cfg(tmp_path, "engine=rllib", "rllib.num_env_runners=2")
    member = plan(cfg)[0]
    bundles = trial_bundles(cfg, member, place([(cfg, member)], gpus=0)[0])
    with pytest.raises(ConfigError, match=r"t/member_0 with its 2 RLlib env runner\(s\).*needs 3 CPUs.*has 2"):
        check_workers_fit(Trial(cfg, member), bundles, [{"CPU": 2.0, "GPU": 0.0}])
    check_workers_fit(Trial(cfg, member), bundles, [{"CPU": 2.0}, {"CPU": 1.0}])  # two nodes hold it together


def test_trial_table_rows_and_off_terminal_lines(tmp_path, capsys, monkeypatch):
    from types import SimpleNamespace

    import launch.trial_table as trial_table
    from launch.ray_trials import TrialTable

    cfg = make_small_cfg(tmp_path, "ensemble.size=2", "population.size=1")
    table = TrialTable(cfg, plan(cfg))
    trials = [SimpleNamespace(config={"job": "member_1"}, status="RUNNING", num_failures=1,
                              last_result={"steps": 32, "sps": 1234.5, "episodic_return": 5.0}),
              SimpleNamespace(config={"job": "member_0"}, status="PENDING", num_failures=0, last_result=None)]
    assert table.rows(trials) == [("member_0", "PENDING", "0 / 64", "-", "-", "-", "0"),
                                  ("member_1", "RUNNING", "32 / 64", "1,234", "5.00", "-", "1")]
    assert table.render(table.rows(trials)).row_count == 2
    monkeypatch.setattr(trial_table, "LINE_INTERVAL_S", 0.0)
    table.setup()  # not a terminal under pytest: lines, not a live table
    table.on_step_end(0, trials)
    from ray.tune import Callback  # the hooks overridden are ones Tune calls

    assert all(hook in vars(Callback) for hook in ("setup", "on_step_end", "on_experiment_end"))
    assert "member_1: RUNNING, 32 / 64 steps, 1,234 steps/s, return 5.00, test -, restarts 1" in capsys.readouterr().err


@pytest.mark.slow  # Ray
def test_checkpoint_error_inside_a_trial_is_not_retried(local_ray, tmp_path):
    """A trial whose checkpoint holds another network fails the same way on every attempt: it ends
    at once with the error as its result (a ConfigError naming it), not after max_failures crashes."""
    small = [*RAY, "ray=false", "explorer.enabled=false", f"ppo.total_steps={STEP}"]
    cfg = make_small_cfg(tmp_path, *small)
    train_run(cfg)
    path = list_checkpoints(cfg.layout.member(0).checkpoints)[0]
    ckpt = load_checkpoint(path)
    save_checkpoint(cfg.layout.member(0).checkpoints, ckpt["step"],
                    {**ckpt, "network": {**ckpt["network"], "hidden": 7}})
    cfg = make_small_cfg(tmp_path, *small, "ray=true", f"ppo.total_steps={2 * STEP}", "resources.max_failures=2")
    with pytest.raises(ConfigError, match="member_0: CheckpointError: checkpoint network"):
        train_run(cfg)
    assert not list(cfg.layout.ray.rglob("error.txt")), "Tune counted a failed attempt"
