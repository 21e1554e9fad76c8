"""Runs as the unit: the evaluations of several runs (seeds) of a config aggregated, and configs
compared, with the ``rliable`` library (Agarwal et al., NeurIPS 2021).

A run's score is what eval.py measured on it (``runs/<name>/eval/results.json``, or
``eval/<name>/`` for a named evaluation): the mean over its episodes of one mode (the members' IQM
for ``member``), as mean return, success rate or ProcGen's normalised score. Runs, not episodes, are
the independent samples when asking whether a config is better: a config's score varies from seed
to seed more than the episodes of one seed show. Each "algorithm" (a mode of a group of runs) gets
(``evaluation/statistics.py``):

- IQM, mean and median over its runs, with 95% stratified-bootstrap CIs (runs resampled within each
  game: rliable's ``get_interval_estimates``);
- the probability of improvement P(X > Y) against the algorithm it is compared with;
- a performance profile: the fraction of runs scoring above each threshold (plotted, with bands).

A run directory given twice (by any spelling of its path) counts once. With fewer than
``MIN_RUNS`` runs of each game there is no interval (one run has no spread to resample); with fewer
than ``RECOMMENDED_RUNS`` the intervals are shown with a warning that they cover less than 95%.

``compare_runs`` loads and computes (a JSON-ready dict), ``print_comparison`` and
``write_comparison`` present it; ``compare.py`` and ``eval.py`` with several runs call them.
"""
from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from core.run_layout import RunLayout  # noqa: E402
from core.sections import EVAL_MODES  # noqa: E402
from evaluation.statistics import (  # noqa: E402
    AGGREGATES,
    CONFIDENCE,
    MIN_RUNS,
    PROFILE_REPS,
    RECOMMENDED_RUNS,
    RUN_REPS,
    performance_profile,
    probability_of_improvement,
    run_aggregates,
)

METRICS = ("return", "success", "normalised")
PROFILE_POINTS = 101
COLORS = ["#2ca02c", "#1f77b4", "#ff7f0e", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]


def load_results(run: str | Path, name: str = "") -> dict[str, Any]:
    """``results.json`` of ``run``'s evaluation (``name``: a named one, eval.py ``--name``).

    Raises FileNotFoundError naming the eval.py command that writes it.
    """
    layout = RunLayout(Path(run))
    if not layout.root.is_dir():
        raise FileNotFoundError(f"run directory {str(run)!r} does not exist")
    path = layout.eval(name) / "results.json"
    if not path.is_file():
        named = f" named {name!r}" if name else ""
        raise FileNotFoundError(f"{run} has no evaluation{named} ({path}); evaluate it first: "
                                f"python eval.py {run}{f' --name {name}' if name else ''} ...")
    return json.loads(path.read_text())


def run_score(results: dict[str, Any], mode: str, metric: str) -> float:
    """A run's score: ``metric`` of ``mode`` (the members' IQM for ``member``). Raises ValueError
    when the run's evaluation has no such mode."""
    modes = results["modes"]
    if mode not in modes:
        raise ValueError(f"run {results['run']!r}: mode {mode!r} was not evaluated (it has "
                         f"{', '.join(modes) or 'none'}); evaluate it with eval.py --modes {mode}, or "
                         "leave it out (--modes)")
    r = modes[mode]["iqm"] if mode == "member" else modes[mode]
    return float(r[metric])


def mode_label(mode: str) -> str:
    return "members (IQM)" if mode == "member" else mode


def group_label(runs: Sequence[str | Path]) -> str:
    """What the runs' names share, without a trailing seed number: runs/maze_s0, runs/maze_s1 -> maze."""
    names = [Path(os.path.abspath(r)).name for r in runs]
    if len(names) == 1:
        return names[0]
    prefix = re.sub(r"(?:[-_.](?:s|seed)?)?\d*$", "", os.path.commonprefix(names))
    return prefix or "runs"


def check_comparable(evaluations: dict[str, dict[str, Any]]) -> None:
    """Every run evaluated on the same split, levels, difficulty and level rule; else ValueError
    naming the runs that differ and how to evaluate them alike."""
    for key, flag in (("split", "--split"), ("levels", "--split"), ("distribution_mode", "env.distribution_mode"),
                      ("unseen", "eval.unseen")):
        seen: dict[str, list[str]] = {}
        for run, r in evaluations.items():
            value = r.get(key)
            if isinstance(value, dict):  # eval.unseen's summary: the rule is what must agree
                value = value.get("rule")
            seen.setdefault(str(value), []).append(run)
        if len(seen) > 1:
            parts = "; ".join(f"{v}: {', '.join(runs)}" for v, runs in seen.items())
            raise ValueError(f"the runs were evaluated with different {key} ({parts}); compare evaluations "
                             f"made alike: re-evaluate with the same {flag} (and eval.py --name to keep both)")


def unique_runs(groups: dict[str, Sequence[str | Path]]) -> tuple[dict[str, list[str]], list[str]]:
    """Each group's runs with repeats dropped, a run being its real path (``os.path.realpath``: the
    same directory under another spelling or through a link is the same run), the first spelling
    kept; and a warning per dropped repeat. Raises ValueError for a run in two groups."""
    owner: dict[str, tuple[str, str]] = {}  # real path -> (group, first spelling)
    kept: dict[str, list[str]] = {}
    notes = []
    for label, runs in groups.items():
        kept[label] = []
        for run in map(str, runs):
            real = os.path.realpath(run)
            if real in owner:
                group, first = owner[real]
                if group != label:
                    raise ValueError(f"{run} is a run of both {group!r} and {label!r}: each run belongs to one config")
                notes.append(f"{run} is {first} again: counted once")
                continue
            owner[real] = (label, run)
            kept[label].append(run)
    return kept, notes


def few_runs_note(label: str, runs: int) -> str | None:
    """What an interval over ``runs`` runs per game can say, when it is less than its 95% label."""
    more = ("train more seeds of the config and evaluate them alike (docs/evaluation.md, "
            "\"Runs as the unit\")")
    if runs < MIN_RUNS:
        return (f"{label}: {runs} run per game, so no interval: a bootstrap over one run has no spread; "
                f"intervals need at least {MIN_RUNS} runs of each game, {RECOMMENDED_RUNS} or more give "
                f"them their stated coverage: {more}")
    if runs < RECOMMENDED_RUNS:
        return (f"{label}: {runs} runs per game: a percentile-bootstrap interval cannot be wider than the "
                f"range of the runs, and the range of {runs} runs holds the median of their distribution "
                f"with probability {1 - 2.0 ** (1 - runs):.0%} (order statistics), so these intervals cover "
                f"less than {CONFIDENCE:.0%}; {RECOMMENDED_RUNS} or more runs per game: {more}")
    return None


def compare_runs(groups: dict[str, Sequence[str | Path]], modes: Sequence[str] | None = None,
                 metric: str = "auto", name: str = "", reps: int = RUN_REPS, seed: int = 0) -> dict[str, Any]:
    """Aggregate each group's runs per mode and compare; a JSON-ready dict.

    ``groups``: label -> run directories (one group: its modes are compared with each other; several:
    each mode is compared across groups); a directory given twice counts once (``unique_runs``).
    ``modes``: default every mode that all the runs evaluated. ``metric``: return | success |
    normalised | auto (return for one game, normalised for several). ``name``: which evaluation of
    each run (eval.py ``--name``). ``reps``, ``seed``: rliable's bootstrap resamples and their seed.
    The dict's ``warnings`` say what the intervals cannot (repeated runs, too few runs). Raises
    FileNotFoundError (a run or its evaluation missing) or ValueError (runs not comparable, a mode or
    metric unknown or not evaluated, a group without a run of some game or with unequal numbers of
    runs of its games, a run in two groups), each saying what to do.
    """
    if not groups or any(not runs for runs in groups.values()):
        raise ValueError("give at least one run directory per group")
    groups, notes = unique_runs(groups)
    evaluations = {run: load_results(run, name) for runs in groups.values() for run in runs}
    check_comparable(evaluations)
    games = sorted({r["game"] for r in evaluations.values()})
    if metric == "auto":
        metric = "return" if len(games) == 1 else "normalised"
    if metric not in METRICS:
        raise ValueError(f"metric {metric!r} is not one of {', '.join(METRICS)}")
    if len(games) > 1 and metric == "return":
        raise ValueError(f"the runs play several games ({', '.join(games)}): returns are not comparable "
                         "across games; use --metric normalised or success")
    unknown = [m for m in modes or () if m not in EVAL_MODES]
    if unknown:
        raise ValueError(f"unknown mode(s) {', '.join(unknown)}; modes: {', '.join(EVAL_MODES)}")
    common = [m for m in EVAL_MODES if all(m in r["modes"] for r in evaluations.values())]
    modes = list(dict.fromkeys(modes)) if modes else common
    if not modes:
        raise ValueError("the runs have no evaluated mode in common; evaluate them with the same eval.py --modes")
    algorithms = []
    for label, runs in groups.items():
        per_game = {g: [r for r in runs if evaluations[r]["game"] == g] for g in games}
        counts = {g: len(rs) for g, rs in per_game.items()}
        lacking = [g for g, n in counts.items() if n == 0]
        if lacking:
            raise ValueError(f"group {label!r} has no run of {', '.join(lacking)}: every group needs runs "
                             "of every game compared")
        if len(set(counts.values())) > 1:
            have = ", ".join(f"{n} of {g}" for g, n in counts.items())
            raise ValueError(f"group {label!r} has unequal numbers of runs per game ({have}): rliable's "
                             "stratified bootstrap takes a (runs x games) matrix; give each game as many runs")
        per_run = len(runs) // len(games)
        note = few_runs_note(label if len(groups) > 1 else group_label(runs), per_run)
        notes += [note] if note else []
        for mode in modes:
            # (runs, games): column g the runs of game g, in the order given
            matrix = np.array([[run_score(evaluations[r], mode, metric) for r in per_game[g]] for g in games]).T
            entry: dict[str, Any] = {"label": mode_label(mode) if len(groups) == 1 else f"{label}: {mode_label(mode)}",
                                     "group": label, "mode": mode, "runs": len(runs), "runs_per_game": per_run,
                                     "scores": {r: run_score(evaluations[r], mode, metric) for r in runs}}
            for agg, (point, ci) in run_aggregates(matrix, reps, seed).items():
                entry[agg], entry[f"{agg}_ci"] = point, ci
            entry["_scores"] = matrix
            algorithms.append(entry)
    improvements = []
    for x, y in comparison_pairs(algorithms, len(groups)):
        p, ci = probability_of_improvement(x["_scores"], y["_scores"], reps, seed)
        improvements.append({"x": x["label"], "y": y["label"], "probability": p, "ci": ci,
                             "runs_per_game": min(x["runs_per_game"], y["runs_per_game"])})
    everything = np.concatenate([a["_scores"].ravel() for a in algorithms])
    lo, hi = (0.0, 1.0) if metric == "success" else (float(everything.min()), float(everything.max()))
    pad = 0.05 * (hi - lo) or 0.5
    taus = np.linspace(lo - pad, hi + pad, PROFILE_POINTS)
    curves = {}
    for a in algorithms:
        fraction, band = performance_profile(a.pop("_scores"), taus, seed=seed)
        curves[a["label"]] = {"fraction": fraction.tolist(), "low": None if band is None else band[0].tolist(),
                              "high": None if band is None else band[1].tolist()}
    first = next(iter(evaluations.values()))
    return {"metric": metric, "games": games, "split": first["split"], "levels": first["levels"],
            "evaluation": name, "groups": groups, "modes": modes, "reps": reps, "profile_reps": PROFILE_REPS,
            "seed": seed, "confidence": CONFIDENCE, "algorithms": algorithms, "improvements": improvements,
            "warnings": notes, "profile": {"taus": taus.tolist(), "curves": curves}}


def comparison_pairs(algorithms: list[dict[str, Any]], groups: int) -> list[tuple[dict, dict]]:
    """Which algorithms P(X > Y) compares: each mode across every pair of groups; with one group,
    ExpGen against each other mode (none without ExpGen)."""
    if groups > 1:
        return [(x, y) for i, x in enumerate(algorithms) for y in algorithms[i + 1:]
                if x["mode"] == y["mode"]]
    expgen = [a for a in algorithms if a["mode"] == "expgen"]
    return [(expgen[0], a) for a in algorithms if a["mode"] != "expgen"] if expgen else []


# ---- presenting ----------------------------------------------------------------------------------


def comparison_title(comp: dict[str, Any]) -> str:
    runs = sorted({a["runs"] for a in comp["algorithms"]})
    return (f"{', '.join(comp['games'])}, split {comp['split']} = {comp['levels']}: {comp['metric']} over "
            f"{' or '.join(map(str, runs))} runs per algorithm, {comp['confidence']:.0%} stratified-bootstrap CIs "
            f"(rliable, {comp['reps']:,} resamples; runs are the unit)")


def format_ci(ci: list[float] | None, runs_per_game: int, digits: int = 3) -> str:
    """[low, high], or why there is none: fewer than ``MIN_RUNS`` runs, or no resample differs."""
    if ci is None:
        return f"n/a (< {MIN_RUNS} runs)" if runs_per_game < MIN_RUNS else "n/a (no spread)"
    return f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def improvement_title(comp: dict[str, Any]) -> str:
    k = len(comp["improvements"])
    several = (f": {k} comparisons, each interval {comp['confidence']:.0%} on its own (not adjusted for multiplicity)"
               if k > 1 else "")
    return f"Probability of improvement P(X > Y) that a run of X scores above a run of Y{several}"


def render_comparison(comp: dict[str, Any]) -> list[Table]:
    """The aggregates table, and the probabilities of improvement when there are any."""
    table = Table(title=comparison_title(comp), title_justify="left")
    for col, justify in [("algorithm", "left"), ("runs", "right"), ("IQM", "right"), ("95% CI", "right"),
                         ("mean", "right"), ("95% CI ", "right"), ("median", "right"), ("95% CI  ", "right")]:
        table.add_column(col, justify=justify)
    for a in comp["algorithms"]:
        cells = [c for agg in AGGREGATES for c in (f"{a[agg]:.3f}", format_ci(a[f"{agg}_ci"], a["runs_per_game"]))]
        table.add_row(a["label"], str(a["runs"]), *cells, style="bold" if a["mode"] == "expgen" else None)
    tables = [table]
    if comp["improvements"]:
        poi = Table(title=improvement_title(comp), title_justify="left")
        for col, justify in [("X", "left"), ("Y", "left"), ("P(X > Y)", "right"), ("95% CI", "right")]:
            poi.add_column(col, justify=justify)
        for p in comp["improvements"]:
            poi.add_row(p["x"], p["y"], f"{p['probability']:.2f}", format_ci(p["ci"], p["runs_per_game"], 2))
        tables.append(poi)
    return tables


def print_comparison(comp: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console(width=None if sys.stdout.isatty() else 160)
    for table in render_comparison(comp):
        console.print(table)
    for note in comp["warnings"]:
        console.print(f"[yellow]warning[/yellow]: {note}", highlight=False)


def comparison_markdown(comp: dict[str, Any]) -> str:
    lines = [f"## {comparison_title(comp)}", "",
             "| algorithm | runs | IQM | 95% CI | mean | 95% CI | median | 95% CI |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for a in comp["algorithms"]:
        cells = " | ".join(f"{a[agg]:.3f} | {format_ci(a[f'{agg}_ci'], a['runs_per_game'])}" for agg in AGGREGATES)
        lines.append(f"| {a['label']} | {a['runs']} | {cells} |")
    if comp["improvements"]:
        lines += ["", f"{improvement_title(comp)}:", ""]
        lines += [f"- P({p['x']} > {p['y']}) = {p['probability']:.2f} {format_ci(p['ci'], p['runs_per_game'], 2)}"
                  for p in comp["improvements"]]
    lines += ["", "Runs: " + "; ".join(f"{label}: {', '.join(runs)}" for label, runs in comp["groups"].items())
              + (f" (evaluation {comp['evaluation']!r})" if comp["evaluation"] else "") + "."]
    lines += [f"\nWarning: {note}" for note in comp["warnings"]]
    return "\n".join(lines) + "\n"


def plot_profiles(comp: dict[str, Any], path: Path) -> Path:
    """Performance profiles (PNG): per algorithm, the fraction of runs scoring above tau, with its
    95% stratified-bootstrap band (none with fewer than ``MIN_RUNS`` runs)."""
    taus = np.array(comp["profile"]["taus"])
    fig, ax = plt.subplots(figsize=(6, 4))
    try:
        for i, (label, c) in enumerate(comp["profile"]["curves"].items()):
            color = COLORS[i % len(COLORS)]
            ax.plot(taus, c["fraction"], color=color, label=label, drawstyle="steps-post")
            if c["low"] is not None:
                ax.fill_between(taus, c["low"], c["high"], color=color, alpha=0.15, step="post")
        ax.set_xlabel(f"{comp['metric']} threshold tau")
        ax.set_ylabel("fraction of runs with score > tau")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"Performance profiles: {', '.join(comp['games'])}, {comp['split']}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
    return path


def default_out(comp: dict[str, Any]) -> Path:
    """``<runs_dir>/comparisons/<label>[_vs_<label>...]``, beside the first run."""
    first = Path(next(iter(comp["groups"].values()))[0])
    slug = "_vs_".join(re.sub(r"[^A-Za-z0-9_.-]+", "-", label) for label in comp["groups"])
    return Path(os.path.abspath(first)).parent / "comparisons" / (slug or "runs")


def write_comparison(comp: dict[str, Any], out: Path) -> dict[str, Path]:
    """results.json, results.md and profiles.png into ``out`` (created)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "markdown": out / "results.md", "plot": out / "profiles.png"}
    paths["json"].write_text(json.dumps(comp, indent=2) + "\n")
    paths["markdown"].write_text(comparison_markdown(comp))
    plot_profiles(comp, paths["plot"])
    return paths
