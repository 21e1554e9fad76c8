"""Checkpoints: exact resume, atomic writes, corrupt files, clear errors, train.py resume."""
from __future__ import annotations

import json
import logging

import pytest
import torch

import train
from core.checkpoint import (
    CheckpointError,
    checkpoint_steps,
    list_checkpoints,
    load_checkpoint,
    load_latest,
    save_checkpoint,
)
from core.runtime import Runtime
from training import checkpointing
from training import population_learner as learner_module
from training.loop import train as train_loop
from training.population_learner import PopulationLearner

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny batches on a shared 2-core CPU


def make_learner(cfg) -> PopulationLearner:
    return PopulationLearner(cfg, [0, 1], Runtime.resolve(cfg.device, cfg.network.precision))


def checkpoints(cfg, member: int):
    return cfg.layout.member(member).checkpoints

STEPS_PER_UPDATE = 4 * 8  # env.num_envs * ppo.num_steps of the small config


@pytest.fixture
def trained(small_cfg):
    """A population of two members trained for 2 updates with a checkpoint after each."""
    cfg = small_cfg("ensemble.size=2", f"ppo.total_steps={2 * STEPS_PER_UPDATE}")
    t = make_learner(cfg)
    train_loop(t, cfg, t.runtime)
    yield cfg, t
    t.close()


def assert_same_training_state(a: PopulationLearner, b: PopulationLearner) -> None:
    for p, q in zip(a.params, b.params):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    for p, q in zip(a.params, b.params):
        sa, sb = a.algorithm.optimizers["actor_critic"].state[p], b.algorithm.optimizers["actor_critic"].state[q]
        assert set(sa) == set(sb) and sa, "Adam state must be restored"
        for k in sa:
            torch.testing.assert_close(torch.as_tensor(sa[k]), torch.as_tensor(sb[k]), rtol=0, atol=0)
    for ga, gb in zip(a.actor.pick.generators + a.minibatches.generators,
                      b.actor.pick.generators + b.minibatches.generators):
        assert torch.equal(ga.get_state(), gb.get_state())
    torch.testing.assert_close(a.next_obs, b.next_obs, rtol=0, atol=0)
    torch.testing.assert_close(a.next_episode_starts, b.next_episode_starts, rtol=0, atol=0)


def test_restore_continues_exactly(trained):
    cfg, a = trained
    for m in (0, 1):  # atomic writes: complete checkpoint files only, no temp files
        names = sorted(p.name for p in checkpoints(cfg, m).iterdir())
        assert names == ["ckpt_000000000032.pt", "ckpt_000000000064.pt"]
    b = make_learner(cfg)
    try:
        # a fresh trainer starts elsewhere: the comparisons below are not vacuous
        assert not all(torch.equal(p, q) for p, q in zip(a.params, b.params))
        assert not torch.equal(a.next_obs, b.next_obs)
        assert checkpointing.restore(b)
        assert (b.update, b.global_step) == (2, 64) == (a.update, a.global_step)
        assert_same_training_state(a, b)
        a.collect()
        b.collect()
        for k in ("actions", "obs", "rewards", "episode_starts", "logprobs", "values"):
            torch.testing.assert_close(getattr(b.ro, k), getattr(a.ro, k), rtol=0, atol=0, msg=k)
        ma, mb = a.learn(), b.learn()
        for k in ma:
            torch.testing.assert_close(mb[k], ma[k], rtol=0, atol=0, msg=k)
        assert_same_training_state(a, b)
    finally:
        b.close()


def test_checkpoints_written_before_the_episode_start_rename_still_resume(trained):
    """Checkpoints written before the episode-start flag had one name hold it as ``next_done``."""
    cfg, a = trained
    marked = []
    for m in (0, 1):
        path = list_checkpoints(checkpoints(cfg, m))[0]
        ckpt = load_checkpoint(path)
        starts = ckpt.pop("next_episode_starts")
        ckpt["next_done"] = marked_starts = (torch.arange(starts.numel()) % 2 == m).float()  # distinct flags
        marked.append(marked_starts)
        path.unlink()
        save_checkpoint(checkpoints(cfg, m), ckpt["step"], ckpt)
    b = make_learner(cfg)
    try:
        assert checkpointing.restore(b)
        assert torch.equal(b.next_episode_starts, torch.stack(marked))
        assert all(torch.equal(p, q) for p, q in zip(a.params, b.params))
    finally:
        b.close()


def test_atomic_write_leaves_only_complete_files(tmp_path, monkeypatch):
    folder = tmp_path / "checkpoints"
    save_checkpoint(folder, 32, {"v": 1})
    save_checkpoint(folder, 64, {"v": 2})
    before = sorted(p.name for p in folder.iterdir())
    assert before == ["ckpt_000000000032.pt", "ckpt_000000000064.pt"]

    def crash(obj, f, *args, **kwargs):
        f.write(b"partial data")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(CheckpointError, match="disk full or not writable: could not write checkpoint .*ckpt_000000000096.pt"):
        save_checkpoint(folder, 96, {"v": 3})
    assert sorted(p.name for p in folder.iterdir()) == before  # no temp file, no ckpt_96
    monkeypatch.undo()
    assert load_latest(folder)["v"] == 2


def test_keeps_newest_three(tmp_path):
    for step in (10, 20, 30, 40, 50):
        save_checkpoint(tmp_path, step, {"v": step})
    assert checkpoint_steps(tmp_path) == [50, 40, 30]
    assert [p.name for p in list_checkpoints(tmp_path)][0] == "ckpt_000000000050.pt"
    assert load_latest(tmp_path)["v"] == 50
    assert load_latest(tmp_path, max_step=45)["v"] == 40


def test_corrupt_newest_checkpoint_is_skipped(trained):
    cfg, _ = trained
    newest = list_checkpoints(checkpoints(cfg, 1))[0]
    assert newest.name.endswith("64.pt")
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])  # truncated
    b = make_learner(cfg)
    try:
        with pytest.warns(UserWarning, match="ckpt_000000000064"):
            assert checkpointing.restore(b)
        # member 1 has no valid step-64 file, so both members resume from step 32
        assert (b.update, b.global_step) == (1, 32)
        ref = load_checkpoint(list_checkpoints(checkpoints(cfg, 0))[1])
        assert ref["step"] == 32
        for k, v in ref["model"].items():
            torch.testing.assert_close(b.pop.member_state_dict(0)[k], v)
    finally:
        b.close()


def test_load_latest_skips_garbage_with_warning(tmp_path):
    save_checkpoint(tmp_path, 1, {"v": "old"})
    bad = tmp_path / "ckpt_000000000002.pt"
    bad.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.warns(UserWarning, match="skipping"):
        assert load_latest(tmp_path)["v"] == "old"


def test_load_checkpoint_errors_name_the_file(tmp_path):
    missing = tmp_path / "ckpt_000000000001.pt"
    with pytest.raises(CheckpointError, match=str(missing)):
        load_checkpoint(missing)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a pytorch file")
    with pytest.raises(CheckpointError, match=str(garbage)):
        load_checkpoint(garbage)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match=str(foreign)):
        load_checkpoint(foreign)
    assert load_latest(tmp_path / "nowhere") is None


def test_cli_resume_without_checkpoints_exits_2(small_cli_args, tmp_path, capsys):
    assert train.main(small_cli_args(resume=True)) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "no checkpoints" in err and str(tmp_path) in err
    assert not list(tmp_path.rglob("ckpt_*.pt"))


@pytest.mark.slow  # trains three runs
def test_cli_rerun_with_larger_budget_continues(small_cli_args, small_cfg, monkeypatch, caplog, capsys):
    calls = []
    original = learner_module.PopulationLearner.collect

    def counting_collect(self):
        calls.append(self.global_step)
        return original(self)

    monkeypatch.setattr(learner_module.PopulationLearner, "collect", counting_collect)
    assert train.main(small_cli_args(f"ppo.total_steps={2 * STEPS_PER_UPDATE}")) == 0
    assert calls == [0, 32]
    cfg = small_cfg(name="quickstart")  # train.py names the run after the YAML file
    assert checkpoint_steps(checkpoints(cfg, 0)) == [64, 32]

    calls.clear()
    with caplog.at_level(logging.INFO, logger="expgen"):
        assert train.main(small_cli_args(f"ppo.total_steps={4 * STEPS_PER_UPDATE}", resume=True)) == 0
    assert calls == [64, 96], "the second run must continue at step 64, not start again"
    assert checkpoint_steps(checkpoints(cfg, 0)) == [128, 96, 64]
    assert load_latest(checkpoints(cfg, 0))["update"] == 4
    assert "resuming at step 64" in caplog.text
    summary = json.loads(cfg.layout.summary.read_text())
    assert [(a["agent"], a["steps"]) for a in summary["agents"]] == [("member_0", 128)]
    assert "member_0" in capsys.readouterr().out  # the summary table

    # the same budget again: nothing left to do
    calls.clear()
    assert train.main(small_cli_args(f"ppo.total_steps={4 * STEPS_PER_UPDATE}")) == 0
    assert calls == []


def test_cli_resume_with_different_network_is_a_clear_error(small_cli_args, capsys):
    assert train.main(small_cli_args(f"ppo.total_steps={STEPS_PER_UPDATE}")) == 0
    capsys.readouterr()
    code = train.main(small_cli_args(f"ppo.total_steps={2 * STEPS_PER_UPDATE}", "network.hidden=64"))
    err = capsys.readouterr().err
    assert code == 2
    assert "network" in err
