"""Sweeps (launch/sweep.py, sweep.py): the grid, independent replicates, one Ray experiment that
trains every run, their evaluation and the table across runs; a re-run redoes nothing."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from core.checkpoint import checkpoint_steps
from core.config import ConfigError
from launch.sweep import axes_of, expand, split_values
from tests.helpers import QUICKSTART, SMALL

QUICK = str(QUICKSTART)


def overrides(tmp_path: Path, *extra: str) -> list[str]:
    """SMALL, then ``extra``, each key once (a sweep takes a key once; later ones win here)."""
    return list({o.split("=", 1)[0]: o for o in [f"runs_dir={tmp_path}", *SMALL, *extra]}.values())


def test_commas_outside_brackets_separate_values():
    assert split_values("maze,heist") == ["maze", "heist"]
    assert split_values("[train,test],[train]") == ["[train,test]", "[train]"]
    assert split_values("'a,b',c") == ["'a,b'", "c"]
    fixed, axes = axes_of(["logging.eval_splits=[train,test]", "env.game=maze,heist", "ppo.lr=3e-4"])
    assert fixed == ["logging.eval_splits=[train,test]", "ppo.lr=3e-4"]
    assert axes == [("env.game", ["maze", "heist"])]


def test_grid_of_configs_axes_and_independent_replicates(tmp_path):
    sweep = expand([QUICK], overrides(tmp_path, "ensemble.size=3", "env.game=maze,heist", "member.algo=ppo,daac"),
                   seeds=2)
    names = [r.cfg.name for r in sweep.runs]
    assert names == [f"quickstart_{g}_algo-{a}_s{i}" for g in ("maze", "heist") for a in ("ppo", "daac")
                     for i in (0, 1)]
    assert {r.variant for r in sweep.runs} == {"quickstart member.algo=ppo", "quickstart member.algo=daac"}
    s0, s1 = sweep.runs[:2]
    assert (s0.cfg.member_seeds, s0.cfg.explorer.seed) == ([0, 1, 2], 1000)
    assert (s1.cfg.member_seeds, s1.cfg.explorer.seed) == ([3, 4, 5], 1001)
    assert (s1.cfg.env.game, s1.cfg.member.algo, s1.replicate) == ("maze", "ppo", 1)
    assert sweep.root == tmp_path / "sweeps" / "quickstart" and sweep.storage == sweep.root / "ray"


@pytest.mark.parametrize("grid, message", [
    (["ensemble.size=2", "seed=0,1"], r"share members with seeds 1"),
    (["explorer.enabled=true", "seed=0,10"], r"share the explorer's seed 1000"),
    (["ray=true,false"], r"ray cannot vary within a sweep"),
    (["env.game=maze,maze"], r"lists a value twice"),
    (["env.game=maze,"], r"empty value"),
])
def test_grids_that_cannot_run_as_asked_are_refused_before_any_work(tmp_path, grid, message):
    with pytest.raises(ConfigError, match=message):
        expand([QUICK], overrides(tmp_path, *grid))
    assert not list(tmp_path.iterdir())


def test_seeds_and_a_seed_axis_or_a_key_twice_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="--seeds makes the replicates' seeds"):
        expand([QUICK], overrides(tmp_path, "seed=0,100"), seeds=2)
    with pytest.raises(ConfigError, match=r"ppo.lr is given twice"):
        expand([QUICK], [*overrides(tmp_path, "ppo.lr=3e-4,1e-3"), "ppo.lr=1e-3"])


@pytest.fixture
def ray_shutdown():
    ray = pytest.importorskip("ray")
    yield
    ray.shutdown()


@pytest.mark.slow  # Ray
def test_sweep_trains_evaluates_and_tabulates_then_a_rerun_redoes_nothing(tmp_path, ray_shutdown, caplog):
    """Two replicates on Ray (one experiment, four trials), each evaluated as eval.py would, the
    table of the variant written; the same command again trains nothing and evaluates nothing
    (no file of a run changes), and a new eval.episodes re-evaluates without training."""
    from launch.sweep import Record, evaluate_runs, tabulate, train

    def grid(episodes: int) -> list[str]:
        return overrides(tmp_path, "ray=true", "explorer.enabled=true", "explorer.total_steps=64", "eval.num_envs=4",
                         f"eval.episodes={episodes}")

    sweep = expand([QUICK], grid(4), seeds=2)
    train(sweep)
    for run in sweep.runs:
        for agent in ("member_0", "explorer"):
            assert max(checkpoint_steps(run.cfg.layout.root / agent / "checkpoints")) == 64
        assert json.loads(run.cfg.layout.summary.read_text())["agents"][0]["steps"] == 64
    experiments = list(sweep.storage.iterdir())
    assert len(experiments) == 1 and len(list(experiments[0].glob("run_trial_*"))) == 4  # one experiment
    assert evaluate_runs(sweep) == []
    (comp,) = tabulate(sweep)
    assert comp["groups"] == {"quickstart": [str(r.cfg.layout.root) for r in sweep.runs]}
    assert {a["mode"] for a in comp["algorithms"]} == {"member", "vote", "explorer", "expgen"}
    assert (sweep.table / "results.md").is_file()

    def files() -> dict[Path, int]:
        return {p: p.stat().st_mtime_ns for r in sweep.runs for p in r.cfg.layout.root.rglob("*") if p.is_file()}

    before = files()
    again = expand([QUICK], grid(4), seeds=2)
    with caplog.at_level(logging.INFO, logger="expgen"):
        train(again)
        assert evaluate_runs(again) == []
    assert files() == before
    for run in again.runs:
        assert f"{run.cfg.name}: trained to its budgets, skipped" in caplog.text
        assert f"{run.cfg.name}: evaluated before with these settings and checkpoints, not again" in caplog.text

    more = expand([QUICK], grid(8), seeds=2)
    train(more)
    assert evaluate_runs(more) == []
    changed = {p for p, t in files().items() if before.get(p) != t}
    assert changed and all("eval" in p.relative_to(tmp_path).parts for p in changed)
    record = json.loads(Record(more).path.read_text())
    assert record["runs"]["quickstart_s0"]["evaluated"]["overrides"] == ["eval.episodes=8"]
