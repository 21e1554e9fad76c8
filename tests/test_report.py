"""Tests of evaluation/report.py's tables on results built from fixed episodes: every interval
printed with its method, none where the episodes have no spread, the members' IQM row described
for what it is, and the differences table saying how many comparisons it holds. (tests/test_eval.py
writes every report file end to end from a trained run.)"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from rich.console import Console

from core.config import load_config
from core.run_layout import RunLayout
from evaluation.episodes import EpisodeStats
from evaluation.report import markdown_table, print_table, write_report
from evaluation.statistics import iqm_summary, paired_difference, summarize_stats
from tests.helpers import QUICKSTART

N = 48


def results_of(game: str, returns: list[np.ndarray], modes: dict[str, np.ndarray]) -> dict:
    """results.json of an evaluation whose members played ``returns`` (members, n) and whose other
    modes played ``modes``, success being a positive return, with ExpGen against each of the others."""
    cfg = load_config(QUICKSTART, [f"env.game={game}"])
    n = returns[0].size

    def stats(rs: list[np.ndarray]) -> EpisodeStats:
        x = np.stack(rs).astype(np.float32)
        return EpisodeStats(x, np.full(x.shape, 100), np.tile(np.arange(n), (len(rs), 1)), x > 0, np.arange(n),
                            np.zeros(n, np.int64))

    member = stats(returns)
    members = [{"member": m, "step": 64, **summarize_stats(member, cfg, m)} for m in range(len(returns))]
    out = {"member": {**summarize_stats(member, cfg), "members": members, "iqm": iqm_summary(member, cfg)}}
    out |= {mode: summarize_stats(stats([x]), cfg, 0) for mode, x in modes.items()}
    differences = []
    if "expgen" in modes:  # the controller's numbers, which these tests do not read
        out["expgen"] |= {"explore_fraction": 0.1, "agreement": 0.9, "vote_histogram": [0, 1, 2, 7],
                          "controller": {"mode": "plurality", "threshold": 3, "burst": "fixed"}}
        a = modes["expgen"]
        sides = [("members (IQM)", None, returns)] + [(m, m, [x]) for m, x in modes.items() if m != "expgen"]
        differences = [{"a": "expgen", "b": label, "agent": agent, "return": paired_difference(a, others),
                        "success": paired_difference(a > 0, [o > 0 for o in others])}
                       for label, agent, others in sides]
    return {"run": "fixed", "name": "", "game": game, "distribution_mode": "easy", "split": "test",
            "levels": "levels [201, 401)", "episodes": n, "seed": 0, "members": len(returns), "sample": True,
            "checkpoints": {"members": [64] * len(returns), "explorer": None}, "modes": out, "skipped": {},
            "differences": differences}


def printed(results: dict) -> str:
    console = Console(width=400, record=True)
    print_table(results, console)
    return console.export_text()


def test_constant_episodes_print_no_zero_width_interval(tmp_path: Path) -> None:
    """48 of 48 maze successes: 10.00 [9.26, 10.00] (exact binomial), where it printed [10.00, 10.00];
    a bigfish return that never varies: n/a."""
    wins = np.full(N, 10.0)
    maze = results_of("maze", [wins], {"vote": wins})
    text = printed(maze)
    vote = next(line for line in text.splitlines() if line.startswith("│ vote"))
    assert "[9.26, 10.00]" in vote and "[93%, 100%]" in vote and "exact binomial" in vote
    assert "[10.00, 10.00]" not in text
    flat = results_of("bigfish", [np.full(N, 3.0)], {"vote": np.full(N, 3.0)})
    vote = next(line for line in printed(flat).splitlines() if line.startswith("│ vote"))
    assert "n/a" in vote and "none: no spread / exact binomial" in vote
    assert "| vote | 3.00 | n/a |" in markdown_table(flat)
    paths = write_report(flat, RunLayout(tmp_path))  # the plot leaves out the bars it has no interval for
    assert paths["plot"].read_bytes()[:4] == b"\x89PNG"


def test_members_iqm_row_says_what_it_is() -> None:
    rng = np.random.default_rng(0)
    easy = rng.random(N)
    members = [(rng.random(N) < 0.2 + 0.6 * easy) * 10.0 for _ in range(3)]
    text = printed(results_of("maze", members, {"vote": members[0]}))
    row = next(line for line in text.splitlines() if line.startswith("│ members (IQM)"))
    assert "BCa, levels" in row and "the 3 members' mean (the IQM trims from 4)" in row and "members fixed" in row


def test_the_differences_table_counts_its_comparisons() -> None:
    rng = np.random.default_rng(1)
    easy = rng.random(N)
    play = lambda p: (rng.random(N) < p + 0.5 * easy) * 10.0
    results = results_of("maze", [play(0.1), play(0.2), play(0.1)],
                         {"vote": play(0.1), "explorer": play(0.0), "expgen": play(0.3)})
    text = " ".join(printed(results).split())
    assert "3 comparisons, each interval 95% on its own, not adjusted for multiplicity" in text
    assert "probability >= 85% (Bonferroni)" in text
    md = markdown_table(results)
    d = results["differences"][1]["return"]
    assert f"- ExpGen - vote {d['difference']:+.2f} [{d['ci'][0]:+.2f}, {d['ci'][1]:+.2f}] in return" in md
    assert "(BCa, episodes)" in md
