"""Tests of compare.py and evaluation/runs.py on run directories whose evaluations (results.json)
are written here with fixed scores: the numbers printed are rliable's on those scores, a run given
twice counts once, one run gives no interval and says so, few runs say their coverage is short.
(tests/test_eval.py runs eval.py and compare.py end to end on trained runs.)"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from rliable import library as rly
from rliable import metrics as rly_metrics

import compare as compare_cli
from evaluation.runs import compare_runs, few_runs_note

REPS = 500


def fake_run(root: Path, name: str, scores: dict[str, float], game: str = "maze") -> Path:
    """A run directory with an evaluation: mode -> mean return (success and normalised from it)."""
    run = root / name
    (run / "eval").mkdir(parents=True)
    modes = {mode: {"return": s, "success": s / 10, "normalised": (s - 5) / 5} for mode, s in scores.items()}
    (run / "eval" / "results.json").write_text(json.dumps({
        "run": name, "game": game, "split": "test", "levels": "levels [201, 401)", "distribution_mode": "easy",
        "unseen": {"rule": "none"}, "modes": modes}))
    return run


EXPGEN = [6.1, 7.3, 5.2, 8.0, 6.6]
VOTE = [5.0, 6.9, 5.2, 7.1, 4.4]
ABLATION = [4.2, 6.0, 5.5, 3.9, 5.1]


@pytest.fixture
def runs(tmp_path: Path) -> dict[str, list[Path]]:
    a = [fake_run(tmp_path, f"a_s{k}", {"vote": v, "expgen": e}) for k, (e, v) in enumerate(zip(EXPGEN, VOTE))]
    b = [fake_run(tmp_path, f"b_s{k}", {"vote": v, "expgen": e}) for k, (e, v) in enumerate(zip(ABLATION, VOTE))]
    return {"a": a, "b": b}


def rliable_ci(scores: np.ndarray, metric, seed: int = 0) -> list[float]:
    np.random.seed(seed)  # rliable draws its resamples from numpy's global generator
    _, cis = rly.get_interval_estimates({"x": scores}, lambda s: np.array([metric(s)]), reps=REPS)
    return [float(cis["x"][0, 0]), float(cis["x"][1, 0])]


def test_printed_numbers_are_rliables(runs: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cmp"
    assert compare_cli.main([*map(str, runs["a"]), "--vs", *map(str, runs["b"]), "--reps", str(REPS),
                             "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    comp = json.loads((out / "results.json").read_text())
    by = {x["label"]: x for x in comp["algorithms"]}
    for label, scores in [("a: expgen", EXPGEN), ("b: expgen", ABLATION), ("a: vote", VOTE)]:
        matrix = np.array(scores)[:, None]
        for agg, metric in [("iqm", rly_metrics.aggregate_iqm), ("mean", rly_metrics.aggregate_mean),
                            ("median", rly_metrics.aggregate_median)]:
            assert by[label][agg] == pytest.approx(float(metric(matrix)))
            ci = rliable_ci(matrix, metric)
            assert by[label][f"{agg}_ci"] == pytest.approx(ci)
            assert f"[{ci[0]:.3f}, {ci[1]:.3f}]" in printed
    np.random.seed(0)
    points, cis = rly.get_interval_estimates({"p": [np.array(EXPGEN)[:, None], np.array(ABLATION)[:, None]]},
                                             rly_metrics.probability_of_improvement, reps=REPS)
    poi = {(p["x"], p["y"]): p for p in comp["improvements"]}[("a: expgen", "b: expgen")]
    assert poi["probability"] == pytest.approx(float(points["p"]))
    assert poi["ci"] == pytest.approx([float(cis["p"][0]), float(cis["p"][1])])
    assert "2 comparisons, each interval 95% on its own" in " ".join(printed.split())
    assert comp["warnings"] == [] and "warning" not in printed


def test_one_run_each_has_no_interval_and_says_so(runs: dict, capsys: pytest.CaptureFixture) -> None:
    """compare.py a1 --vs b1 used to print P = 1.0 [1.0, 1.0] and zero-width intervals."""
    capsys.readouterr()
    comp = compare_runs({"a": runs["a"][:1], "b": runs["b"][:1]}, reps=REPS)
    assert all(x[f"{agg}_ci"] is None for x in comp["algorithms"] for agg in ("iqm", "mean", "median"))
    assert all(p["ci"] is None for p in comp["improvements"])
    assert all(c["low"] is None for c in comp["profile"]["curves"].values())
    assert len(comp["warnings"]) == 2 and all("no interval" in w and "at least 2 runs" in w for w in comp["warnings"])
    assert compare_cli.main([str(runs["a"][0]), "--vs", str(runs["b"][0]), "--reps", str(REPS)]) == 0
    printed = capsys.readouterr().out
    assert "n/a (< 2 runs)" in printed and "warning" in printed and "train more seeds" in printed


def test_two_runs_each_that_never_overlap_have_no_spread(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """2 runs each, 0.05 apart: every resample has X above Y, so P = 1.00 with no interval, where it
    printed [1.00, 1.00]; and the warning says what 2 runs can cover."""
    a = [fake_run(tmp_path, f"x_s{k}", {"vote": 6.1 + 0.05 * k}) for k in range(2)]
    b = [fake_run(tmp_path, f"y_s{k}", {"vote": 6.0 + 0.05 * k}) for k in range(2)]
    capsys.readouterr()
    assert compare_cli.main([*map(str, a), "--vs", *map(str, b), "--reps", str(REPS), "--out", str(tmp_path / "o")]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    comp = json.loads((tmp_path / "o" / "results.json").read_text())
    (poi,) = comp["improvements"]
    assert poi["probability"] == 1.0 and poi["ci"] is None and "│ 1.00 │ n/a (no spread) │" in printed
    assert "[1.00, 1.00]" not in printed and "probability 50%" in printed


def test_the_same_directory_twice_counts_once(runs: dict, tmp_path: Path) -> None:
    a0, a1 = runs["a"][:2]
    os.symlink(a1, tmp_path / "link")
    comp = compare_runs({"a": [a0, f"{a0}/", a1, tmp_path / "link"]}, reps=REPS)
    expgen = next(x for x in comp["algorithms"] if x["mode"] == "expgen")
    assert expgen["runs"] == 2 and expgen["mean"] == pytest.approx(np.mean(EXPGEN[:2]))
    assert comp["groups"] == {"a": [str(a0), str(a1)]}
    assert [w for w in comp["warnings"] if "counted once" in w] == [f"{a0}/ is {a0} again: counted once",
                                                                    f"{tmp_path / 'link'} is {a1} again: counted once"]
    with pytest.raises(ValueError, match="both 'a' and 'b'"):
        compare_runs({"a": [a0, a1], "b": [a1, runs["b"][0]]}, reps=REPS)


def test_few_runs_say_their_coverage_is_short(runs: dict) -> None:
    """2 or 3 runs: the interval is the runs' range, which holds their median with probability 50% or
    75%, not 95%: the warning says so; 5 runs give none."""
    comp = compare_runs({"a": runs["a"][:3]}, reps=REPS)
    expgen = next(x for x in comp["algorithms"] if x["mode"] == "expgen")
    assert expgen["mean_ci"] == pytest.approx([min(EXPGEN[:3]), max(EXPGEN[:3])])  # the range, as the warning says
    (note,) = comp["warnings"]
    assert "3 runs per game" in note and "probability 75%" in note and "less than 95%" in note
    assert "probability 50%" in few_runs_note("x", 2) and few_runs_note("x", 5) is None


def test_several_games_need_a_full_matrix(tmp_path: Path) -> None:
    """rliable takes (runs x games): unequal runs per game are refused; the median is over games."""
    a = [fake_run(tmp_path, f"m{k}", {"vote": 6.0 + k}) for k in range(2)]
    a += [fake_run(tmp_path, f"c{k}", {"vote": 8.0 + k}, game="coinrun") for k in range(3)]
    with pytest.raises(ValueError, match="unequal numbers of runs per game"):
        compare_runs({"a": a}, reps=REPS)
    comp = compare_runs({"a": a[:4]}, reps=REPS)
    vote = comp["algorithms"][0]
    assert comp["metric"] == "normalised" and vote["runs_per_game"] == 2
    matrix = np.array([[0.2, 0.6], [0.4, 0.8]])  # (runs, games), normalised (return - 5) / 5
    assert vote["median"] == pytest.approx(float(rly_metrics.aggregate_median(matrix)))
    assert vote["median_ci"] == pytest.approx(rliable_ci(matrix, rly_metrics.aggregate_median))


def test_bad_reps_is_refused(runs: dict, capsys: pytest.CaptureFixture) -> None:
    assert compare_cli.main([str(runs["a"][0]), "--reps", "0"]) == 2
    assert "--reps must be at least 1" in capsys.readouterr().err
