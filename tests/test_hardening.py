"""Bad input and interrupted runs: a clear error before any work, nothing lost."""
from __future__ import annotations

import pytest

import eval as eval_cli
import train as train_cli
from core.config import ConfigError
from launch.run import run_lock, train_run

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny batches on a shared 2-core CPU


def test_a_second_train_on_the_same_run_is_refused(small_cfg, capsys):
    cfg = small_cfg()
    with run_lock(cfg.layout):  # as if another train.py were running
        with pytest.raises(ConfigError, match=r"is being trained by pid \d+"):
            train_run(cfg)
    assert not cfg.layout.member(0).checkpoints.exists()  # nothing was trained
    train_run(cfg)  # released: the run trains
    assert cfg.layout.member(0).checkpoints.exists()


def test_stale_temporaries_are_removed_on_start(small_cfg):
    cfg = small_cfg()
    folder = cfg.layout.member(0).checkpoints
    folder.mkdir(parents=True)
    stale = folder / ".tmp_killed_mid_write.pt"
    stale.write_bytes(b"half a checkpoint")
    train_run(cfg)
    assert not stale.exists() and list(folder.glob("ckpt_*.pt"))


def test_runs_dir_that_is_a_file_is_a_clear_error(small_cli_args, tmp_path, capsys):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("")
    assert train_cli.main(small_cli_args(f"runs_dir={blocker}")) == 2
    assert "cannot write the run directory" in capsys.readouterr().err


def test_empty_mode_list_is_refused(small_cli_args, tmp_path, capsys):
    assert train_cli.main(small_cli_args()) == 0
    assert eval_cli.main([str(tmp_path / "quickstart"), "--modes", ","]) == 2
    assert "eval.modes is empty" in capsys.readouterr().err


def test_unwritable_eval_folder_fails_before_any_episode(small_cli_args, tmp_path, capsys, monkeypatch):
    assert train_cli.main(small_cli_args()) == 0
    (tmp_path / "quickstart" / "eval").write_text("a file where the eval folder should be")
    import evaluation.evaluate as evaluate

    monkeypatch.setattr(evaluate, "play", lambda *a, **k: pytest.fail("episodes were played"))
    assert eval_cli.main([str(tmp_path / "quickstart"), "--modes", "member"]) == 2
    assert "cannot write evaluation results" in capsys.readouterr().err


def test_progress_off_a_terminal_prints_lines(small_cli_args, capsys, monkeypatch):
    """Piped into a file or in CI there is no terminal to redraw a bar on: one line per update
    here (interval 0), with steps, steps/s, return and ETA."""
    import launch.progress as progress

    monkeypatch.setattr(progress, "LINE_INTERVAL_S", 0.0)
    assert train_cli.main(small_cli_args("logging.progress=true")) == 0
    lines = [l for l in capsys.readouterr().err.splitlines() if l.startswith("member_0:")]
    assert lines[0] == "member_0: 0 / 64 steps"
    assert lines[-1].startswith("member_0: 64 / 64 steps (100%),") and "steps/s" in lines[-1] and "ETA" in lines[-1]
    assert len(lines) == 1 + 2  # the start and both updates


@pytest.mark.slow  # trains three runs
def test_rerun_with_an_incompatible_change_is_refused_and_config_kept(small_cfg):
    cfg = small_cfg()
    train_run(cfg)
    saved = cfg.layout.config.read_text()
    with pytest.raises(ConfigError, match=r"network\.hidden: 256 -> 128.*new run name"):
        train_run(small_cfg("network.hidden=128"))
    with pytest.raises(ConfigError, match=r"ppo\.lr"):
        train_run(small_cfg("ppo.lr=1e-3"))
    assert cfg.layout.config.read_text() == saved


def test_rerun_that_trains_nothing_leaves_config_alone_and_budgets_may_grow(small_cfg):
    cfg = small_cfg()
    train_run(cfg)
    mtime = cfg.layout.config.stat().st_mtime_ns
    train_run(small_cfg("logging.eval_episodes=7"))  # finished: nothing to train, nothing rewritten
    assert cfg.layout.config.stat().st_mtime_ns == mtime
    longer = small_cfg("ppo.total_steps=128")
    summary = train_run(longer)  # a larger budget continues the run
    assert summary["agents"][0]["steps"] == 128
    assert "total_steps: 128" in cfg.layout.config.read_text()
