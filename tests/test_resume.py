"""Re-runs that change the run around its finished work: each agent resumes from its own newest
readable checkpoint (launch/jobs.py), a finished agent is never trained or touched again, a run
resumes on another device type, and an annealed learning rate stays continuous when the budget grows.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import eval as eval_cli
import train
from agents.ppo import LRSchedule
from core.checkpoint import checkpoint_steps, list_checkpoints, load_checkpoint, load_latest, save_checkpoint
from core.config import load_config, save_config
from core.run_layout import AgentDir, RunLayout
from core.sections import PPOConfig
from launch.jobs import plan
from launch.run import load_training_config, train_run

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 4 * 8  # env steps per update of the small config
BUDGET = [f"ppo.total_steps={3 * STEPS}"]  # checkpoints at 32, 64 and 96


def snapshot(agent: AgentDir) -> dict[Path, tuple[int, str]]:
    """Every file of an agent's folder: modification time and content hash."""
    return {p: (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(agent.path.rglob("*")) if p.is_file()}


def final_model(agent: AgentDir) -> dict[str, torch.Tensor]:
    return load_latest(agent.checkpoints)["model"]


def assert_same_model(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


@pytest.fixture
def reference(small_cfg):
    """Two members trained together, uninterrupted, to the budget: what every re-run must equal."""
    cfg = small_cfg("ensemble.size=2", *BUDGET, name="reference")
    train_run(cfg)
    return [final_model(cfg.layout.member(m)) for m in (0, 1)]


@pytest.mark.slow  # trains several runs to compare them
def test_growing_the_ensemble_leaves_the_finished_member_alone(small_cfg, reference):
    """ensemble.size 1 -> 2: member_0 keeps its files (checkpoints, one event file); member_1
    trains from step 0 alone and ends where it ends when trained beside member_0 from the start."""
    cfg = small_cfg("ensemble.size=1", *BUDGET)
    train_run(cfg)
    member_0 = cfg.layout.member(0)
    before = snapshot(member_0)
    assert checkpoint_steps(member_0.checkpoints) == [96, 64, 32]

    grown = small_cfg("ensemble.size=2", *BUDGET)
    assert [j.name for j in plan(grown)] == ["member_0", "member_1"]  # one shard, split by progress
    train_run(grown)
    assert snapshot(member_0) == before
    assert len(list(member_0.tb.glob("events.*"))) == 1
    assert checkpoint_steps(grown.layout.member(1).checkpoints) == [96, 64, 32]
    assert_same_model(final_model(grown.layout.member(1)), reference[1])


@pytest.mark.slow  # trains several runs to compare them
def test_population_size_change_resumes_each_member_from_its_own_step(small_cfg, reference, caplog):
    """population.size 1 -> 0 after member_0 finished and member_1 stopped at step 64."""
    cfg = small_cfg("ensemble.size=2", "population.size=1", *BUDGET)
    train_run(cfg)
    member_0, member_1 = cfg.layout.member(0), cfg.layout.member(1)
    list_checkpoints(member_1.checkpoints)[0].unlink()  # as if stopped after its step-64 checkpoint
    before = snapshot(member_0)

    together = small_cfg("ensemble.size=2", "population.size=0", *BUDGET)
    assert [j.name for j in plan(together)] == ["member_0", "member_1"]
    with caplog.at_level(logging.INFO, logger="expgen"):
        train_run(together)
    assert "member_0: already trained to its budget, skipped" in caplog.text
    assert "member_1: resuming at step 64" in caplog.text
    assert snapshot(member_0) == before
    for m in (0, 1):
        assert_same_model(final_model(cfg.layout.member(m)), reference[m])


@pytest.mark.slow  # trains several runs to compare them
def test_one_members_corrupt_newest_checkpoint_costs_only_that_member(small_cfg, reference, caplog):
    """Two finished members of one job; member_1's final checkpoint is corrupt: member_1 alone
    re-trains its last update (replaying it exactly), member_0 is not touched."""
    cfg = small_cfg("ensemble.size=2", *BUDGET)
    train_run(cfg)
    member_0, member_1 = cfg.layout.member(0), cfg.layout.member(1)
    list_checkpoints(member_1.checkpoints)[0].write_bytes(b"truncated by a full disk")
    before = snapshot(member_0)

    assert [j.name for j in plan(cfg)] == ["member_0", "member_1"]
    with caplog.at_level(logging.INFO, logger="expgen"):
        train_run(cfg)
    assert "member_1: resuming at step 64" in caplog.text
    assert snapshot(member_0) == before
    assert_same_model(final_model(member_1), reference[1])


def test_members_split_by_progress_train_together_per_step(small_cfg):
    """Four members of one shard at steps 96, 0, 96, 32: one job per step, each of the members
    that share it (not consecutive ones named by their list)."""
    cfg = small_cfg("ensemble.size=4", *BUDGET)
    train_run(cfg)
    for m, keep in ((1, 0), (3, 1)):  # member_1 back to no checkpoint, member_3 to step 32
        for path in list_checkpoints(cfg.layout.member(m).checkpoints)[: 3 - keep]:
            path.unlink()
    assert [j.name for j in plan(cfg)] == ["members_0,2", "member_1", "member_3"]
    assert cfg.layout.population_tb([0, 2]).parent.name == "population_0,2"


@pytest.mark.slow  # trains, resumes, then eval.py
def test_resume_on_another_device_type_continues_with_a_new_sampling_stream(small_cfg, caplog):
    """A checkpoint whose sampling generator state has CUDA's form (16 bytes: Philox seed and
    offset) resumes on the CPU; eval.py evaluates the run too."""
    cfg = small_cfg(f"ppo.total_steps={2 * STEPS}")
    train_run(cfg)
    folder = cfg.layout.member(0).checkpoints
    newest = list_checkpoints(folder)[0]
    ckpt = load_checkpoint(newest)
    assert ckpt["rng"]["sample"].numel() == torch.Generator().get_state().numel()  # the CPU's form
    ckpt["rng"]["sample"] = torch.zeros(16, dtype=torch.uint8)
    ckpt["rng"]["sample_device"] = "cuda"
    save_checkpoint(folder, ckpt.pop("step"), {k: v for k, v in ckpt.items() if k != "format"})

    longer = small_cfg(f"ppo.total_steps={3 * STEPS}")
    with caplog.at_level(logging.WARNING, logger="expgen"):
        train_run(longer)
    assert "member_0: the checkpoint's action-sampling stream was saved on cuda" in caplog.text
    assert checkpoint_steps(folder)[0] == 3 * STEPS
    assert eval_cli.main([str(cfg.layout.root), "--episodes", "2", "--modes", "member", "eval.num_envs=2",
                          "device=cpu"]) == 0


def test_a_moved_runs_own_config_trains_that_run_where_it_now_is(small_cfg, small_cli_args, tmp_path, caplog):
    """runs/t trained to step 64, moved to archive/t2; train.py --config archive/t2/config.yaml with a
    larger budget resumes archive/t2 at step 64 (not a fresh run from step 0 back in runs/t)."""
    cfg = small_cfg(f"ppo.total_steps={2 * STEPS}")
    train_run(cfg)
    moved = tmp_path / "archive" / "t2"
    moved.parent.mkdir()
    cfg.layout.root.rename(moved)
    with caplog.at_level(logging.INFO, logger="expgen"):
        assert train.main(["--config", str(moved / "config.yaml"), f"ppo.total_steps={3 * STEPS}"]) == 0
    assert f"is the config of the run in {moved}" in caplog.text and "member_0: resuming at step 64" in caplog.text
    assert checkpoint_steps(RunLayout(moved).member(0).checkpoints) == [96, 64, 32]
    assert not cfg.layout.root.exists()
    saved = load_config(moved / "config.yaml")  # the file now says where the run is
    assert (Path(saved.runs_dir), saved.name) == (moved.parent, "t2")


def test_which_run_a_config_file_trains(small_cfg, tmp_path):
    """Only a run's own config.yaml (in a folder train.py worked in) follows its folder; a name or
    runs_dir override names a new run from its settings; any other file trains where it says."""
    cfg = small_cfg()
    save_config(cfg, cfg.layout.config)
    moved = tmp_path / "archive" / "t2"
    moved.mkdir(parents=True)
    (moved / "config.yaml").write_text(cfg.layout.config.read_text())
    assert load_training_config(moved / "config.yaml").layout.root == cfg.layout.root  # no run there yet
    RunLayout(moved).member(0).checkpoints.mkdir(parents=True)
    assert load_training_config(moved / "config.yaml").layout.root == moved
    assert load_training_config(moved / "config.yaml", ["name=t3"]).layout.root == tmp_path / "t3"
    assert load_training_config(moved / "config.yaml", ["runs_dir=elsewhere"]).layout.root == Path("elsewhere/t")
    template = tmp_path / "archive" / "copy.yaml"  # a run's config copied out as a template
    template.write_text(cfg.layout.config.read_text())
    assert load_training_config(template).layout.root == cfg.layout.root


def read_lr(tb: Path) -> list[float]:
    acc = EventAccumulator(str(tb))
    acc.Reload()
    return [e.value for e in acc.Scalars("charts/learning_rate")]


@pytest.mark.slow  # trains several runs to compare them
def test_extending_an_annealed_run_keeps_the_learning_rate_continuous(small_cfg):
    """4 annealed updates, then twice the budget: from the last rate used (1.25e-4 at update 3)
    linearly to 0 at update 8, instead of jumping back up to 2.5e-4."""
    cfg = small_cfg("ppo.anneal_lr=true", "ppo.lr=5e-4", f"ppo.total_steps={4 * STEPS}")
    train_run(cfg)
    train_run(small_cfg("ppo.anneal_lr=true", "ppo.lr=5e-4", f"ppo.total_steps={8 * STEPS}"))
    logged = read_lr(cfg.layout.member(0).tb)
    want = [5e-4, 3.75e-4, 2.5e-4, 1.25e-4] + [1.25e-4 * (1 - k / 5) for k in range(1, 5)]
    assert logged == pytest.approx(want, rel=1e-6)
    # The checkpoint carries the extended schedule, so a later re-run continues this one.
    assert load_latest(cfg.layout.member(0).checkpoints)["lr_schedule"] == {
        "num_updates": 8, "start_update": 3, "start_lr": pytest.approx(1.25e-4)}


def test_lr_schedule_resumed_mid_run_and_unchanged():
    fresh = LRSchedule.from_config(PPOConfig(lr=1.0, anneal_lr=True), num_updates=4)
    assert [fresh(u) for u in range(4)] == [1.0, 0.75, 0.5, 0.25]  # CleanRL's lr * (1 - u / N)
    assert fresh.resumed(fresh.state(), update=2) == fresh  # same budget: the same schedule
    assert fresh.resumed(None, update=2) == fresh  # a checkpoint from before schedules were saved
    grown = LRSchedule.from_config(PPOConfig(lr=1.0, anneal_lr=True), num_updates=7).resumed(fresh.state(), 2)
    assert [grown(u) for u in range(2, 7)] == pytest.approx([0.75 * (1 - k / 6) for k in range(1, 6)])
    twice = LRSchedule.from_config(PPOConfig(lr=1.0, anneal_lr=True), num_updates=9).resumed(grown.state(), 4)
    assert twice(4) == pytest.approx(grown(3) * (1 - 1 / 6))  # from grown's last rate, not fresh's
    constant = LRSchedule.from_config(PPOConfig(lr=1.0), num_updates=9).resumed(fresh.state(), 2)
    assert constant(5) == 1.0
