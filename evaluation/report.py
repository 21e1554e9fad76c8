"""Present ``evaluation/evaluate.py``'s results: terminal table, JSON, Markdown, PNG, TensorBoard.

Every view is built from the same rows (``summary_rows``): one per member, the members' IQM, then the
vote, the explorer and ExpGen, so the terminal, the Markdown file and the plot always agree; below
them, ExpGen against the other modes episode by episode (``difference_rows``, paired CIs). Each row
names how its intervals were computed (``evaluation/statistics.py``), and shows none ("n/a") where
the episodes have no spread to give one.
Files go to ``runs/<name>/eval/``: ``results.json``, ``results.md``, ``results.png``, ``episodes.csv``
(one row per episode: ``evaluation/records.py``) and ``tb/<split>/`` (one point per step there:
re-evaluating the same checkpoints replaces the old point).
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display needed (and none on servers)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from torch.utils.tensorboard import SummaryWriter  # noqa: E402

from core.run_layout import RunLayout  # noqa: E402
from evaluation.records import EPISODES_CSV, write_episode_table  # noqa: E402
from evaluation.tb_events import write_replacing_steps  # noqa: E402

METHODS_NOTE = ("95% CIs: exact binomial = Clopper-Pearson (success rates; returns that are a success bonus "
                "times success); BCa, episodes = BCa bootstrap over episodes (percentile where BCa is undefined); "
                "BCa, levels = over levels, one draw for all members, the members fixed; n/a = no spread to give "
                "an interval (docs/evaluation.md)")
MODE_COLORS = {"member": "#9e9e9e", "iqm": "#616161", "vote": "#1f77b4", "explorer": "#ff7f0e",
               "expgen": "#2ca02c"}


@dataclass
class Row:
    """One line of every view: an agent (or aggregate) and its numbers."""

    label: str
    kind: str  # member | iqm | vote | explorer | expgen
    ret: float
    ci: list[float] | None  # 95% interval of ret, None: the data give none
    success: float
    success_ci: list[float] | None
    normalised: float
    length: float | None
    episodes: str
    method: str  # how the intervals were computed
    note: str = ""


def ci_method(return_method: str, success_method: str | None) -> str:
    """The intervals' method, once when return and success share it, else "return / success"."""
    if not success_method or success_method == return_method:
        return return_method
    return f"{return_method} / {success_method}"


def _row(label: str, kind: str, r: dict[str, Any], episodes: str, note: str = "") -> Row:
    method = ci_method(r.get("return_ci_method", "-"), r.get("success_ci_method"))  # "-": not recorded
    return Row(label, kind, r["return"], r["return_ci"], r["success"], r.get("success_ci"), r["normalised"],
               r.get("length"), episodes, method, note)


def format_ci(ci: list[float] | None, fmt: str) -> str:
    """``[low, high]`` in ``fmt`` (a format spec such as ``.2f``), or "n/a" where there is none."""
    return "n/a" if ci is None else f"[{ci[0]:{fmt}}, {ci[1]:{fmt}}]"


def iqm_note(members: int) -> str:
    if members == 1:
        return "one member: its own numbers and intervals"
    what = "IQM of the members' means" if members >= 4 else f"the {members} members' mean (the IQM trims from 4)"
    return f"{what}; levels resampled, members fixed"


def expgen_note(r: dict[str, Any]) -> str:
    return f"explores {r['explore_fraction']:.0%} of steps, agreement {r['agreement']:.2f}"


def summary_rows(results: dict[str, Any]) -> list[Row]:
    """Rows in display order; the member mode contributes one row per member and the IQM."""
    rows, n = [], str(results["episodes"])
    for mode, r in results["modes"].items():
        if mode == "member":
            rows += [_row(f"member {m['member']}", "member", m, n, f"step {m['step']:,}")
                     for m in r["members"]]
            rows.append(_row("members (IQM)", "iqm", r["iqm"], f"{len(r['members'])}x{n}",
                             iqm_note(len(r["members"]))))
            if len(r["members"]) > 1:
                best = max(r["members"], key=lambda m: m["return"])
                rows.append(_row("best member", "member", best, n,
                                 f"member {best['member']}, picked on these episodes (optimistic)"))
        else:
            rows.append(_row(mode, mode, r, n, expgen_note(r) if mode == "expgen" else ""))
    return rows


@dataclass
class DifferenceRow:
    """ExpGen minus another mode over the same episodes: mean return and success rate, paired CIs
    (None: the differences have no spread)."""

    label: str
    ret: float
    ret_ci: list[float] | None
    success: float
    success_ci: list[float] | None
    episodes: int
    method: str


def difference_rows(results: dict[str, Any]) -> list[DifferenceRow]:
    """One row per entry of ``results["differences"]`` (none in results written before them)."""
    rows = []
    for d in results.get("differences", []):
        other = d["b"] + (f" ({d['agent'].replace('_', ' ')})" if d["b"] == "best member" else "")
        r, s = d["return"], d["success"]
        method = ci_method(r.get("method", "-"), s.get("method"))
        rows.append(DifferenceRow(f"ExpGen - {other}", r["difference"], r["ci"], s["difference"], s["ci"],
                                  r["episodes"], method))
    return rows


def difference_title(results: dict[str, Any]) -> str:
    """What the differences are, and how many: each interval is 95% on its own, and the more of
    them a table holds, the likelier one excludes the truth by chance (Bonferroni's bound)."""
    k = len(results.get("differences", []))
    several = (f"; {k} comparisons, each interval 95% on its own, not adjusted for multiplicity: all {k} of a "
               f"column hold together with probability >= {1 - 0.05 * k:.0%} (Bonferroni)" if k > 1 else "")
    return (f"ExpGen against the other modes on the same {results['episodes']} episodes (same levels, same "
            f"env slots): differences with paired 95% bootstrap CIs{several}")


def title(results: dict[str, Any]) -> str:
    return (f"{results['run']}: {results['game']} ({results['distribution_mode']}), "
            f"split {results['split']} = {results['levels']}, {results['episodes']} episodes per agent, "
            f"seed {results['seed']}")


# ---- terminal ------------------------------------------------------------------------------------


def render_differences(results: dict[str, Any]) -> Table | None:
    """A rich table of ``difference_rows``, or None when there are none."""
    rows = difference_rows(results)
    if not rows:
        return None
    table = Table(title=difference_title(results), title_justify="left")
    for name, justify in [("comparison", "left"), ("return", "right"), ("95% CI", "right"),
                          ("success", "right"), ("95% CI ", "right"), ("CI method", "left")]:
        table.add_column(name, justify=justify)
    for row in rows:
        table.add_row(row.label, f"{row.ret:+.2f}", format_ci(row.ret_ci, "+.2f"),
                      f"{row.success:+.1%}", format_ci(row.success_ci, "+.1%"), row.method)
    return table


def render_table(results: dict[str, Any]) -> Table:
    """A rich table of every mode side by side (one row each)."""
    table = Table(title=title(results), title_justify="left")
    for name, justify in [("agent", "left"), ("return", "right"), ("95% CI", "right"),
                          ("success", "right"), ("95% CI ", "right"), ("normalised", "right"), ("length", "right"),
                          ("episodes", "right"), ("CI method", "left"), ("", "left")]:
        table.add_column(name, justify=justify)
    for row in summary_rows(results):
        style = "bold" if row.kind in ("iqm", "expgen") else None
        table.add_row(row.label, f"{row.ret:.2f}", format_ci(row.ci, ".2f"),
                      f"{row.success:.0%}", format_ci(row.success_ci, ".0%"), f"{row.normalised:.2f}",
                      "-" if row.length is None else f"{row.length:.0f}", row.episodes, row.method, row.note,
                      style=style)
    return table


def print_table(results: dict[str, Any], console: Console | None = None) -> None:
    # Off a terminal rich assumes 80 columns and wraps every cell; a log file can be wider.
    console = console or Console(width=None if sys.stdout.isatty() else 160)
    console.print(render_table(results))
    console.print(METHODS_NOTE, highlight=False)
    differences = render_differences(results)
    if differences is not None:
        console.print(differences)
    for mode, reason in results.get("skipped", {}).items():
        console.print(f"[yellow]skipped {mode}[/yellow]: {reason}")


# ---- files ---------------------------------------------------------------------------------------


def markdown_table(results: dict[str, Any]) -> str:
    """The results as Markdown: a heading naming the split's levels, the table, ExpGen's vote counts."""
    lines = [f"## {title(results)}", "",
             "| agent | return | 95% CI | success | 95% CI | normalised | length | episodes | CI method | notes |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for row in summary_rows(results):
        length = "-" if row.length is None else f"{row.length:.0f}"
        lines.append(f"| {row.label} | {row.ret:.2f} | {format_ci(row.ci, '.2f')} | {row.success:.0%} | "
                     f"{format_ci(row.success_ci, '.0%')} | {row.normalised:.2f} | {length} | {row.episodes} | "
                     f"{row.method} | {row.note} |")
    lines += ["", METHODS_NOTE]
    differences = difference_rows(results)
    if differences:
        lines += ["", f"{difference_title(results)}:", ""]
        points = [None if d.success_ci is None else [100 * v for v in d.success_ci] for d in differences]
        lines += [f"- {d.label} {d.ret:+.2f} {format_ci(d.ret_ci, '+.2f')} in return, "
                  f"{100 * d.success:+.1f} {format_ci(p, '+.1f')} points of success ({d.method})"
                  for d, p in zip(differences, points)]
    expgen = results["modes"].get("expgen")
    if expgen is not None:
        c = expgen["controller"]
        counts = ", ".join(f"{v}: {k}" for v, k in enumerate(expgen["vote_histogram"]) if k)
        lines += ["", f"ExpGen controller: {c['mode']} votes, threshold {c['threshold']} of "
                      f"{results['members']}, {c['burst']} bursts; steps per vote count: {counts}."]
    for mode, reason in results.get("skipped", {}).items():
        lines += ["", f"Skipped `{mode}`: {reason}"]
    ckpts = results["checkpoints"]
    named = [(f"member_{m}", s) for m, s in enumerate(ckpts["members"])]
    named += [("explorer", ckpts["explorer"])] if ckpts.get("explorer") is not None else []
    checkpoints = ", ".join(f"{k} {v:,}" for k, v in named)
    lines += ["", f"Checkpoint steps: {checkpoints}. Actions {'sampled' if results['sample'] else 'argmax'}."]
    if ckpts.get("warning"):
        lines += ["", f"**Warning:** {ckpts['warning']}"]
    return "\n".join(lines) + "\n"


def plot_results(results: dict[str, Any], path: Path) -> Path:
    """Bar chart of mean return per agent with 95% CI error bars (PNG; no bar where there is no
    interval)."""
    rows = summary_rows(results)
    x = np.arange(len(rows))
    means = np.array([r.ret for r in rows])
    ci = np.array([r.ci if r.ci is not None else [np.nan, np.nan] for r in rows], dtype=np.float64)
    err = np.array([means - ci[:, 0], ci[:, 1] - means]).clip(min=0)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.8 * len(rows) + 2), 4))
    try:
        ax.bar(x, means, yerr=err, capsize=4, color=[MODE_COLORS[r.kind] for r in rows])
        ax.set_xticks(x, [r.label for r in rows], rotation=30, ha="right")
        ax.set_ylabel("mean episode return")
        ax.set_title(f"{results['game']}: {results['split']} {results['levels']}, "
                     f"{results['episodes']} episodes, 95% CIs (methods: results.md)", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        tmp = path.with_name(path.name + ".tmp.png")  # an interrupted save keeps the old chart
        fig.savefig(tmp, dpi=120)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
    return path


def global_step(results: dict[str, Any]) -> int:
    """The members' newest checkpoint step: evaluations of later checkpoints plot further right."""
    return max(results["checkpoints"]["members"], default=0)


def write_tensorboard(results: dict[str, Any], folder: Path) -> Path:
    """Scalars per mode, ExpGen's explore fraction, agreement and vote histogram, the Markdown table,
    all at the members' checkpoint step, replacing what an earlier evaluation logged at that step
    (``evaluation/tb_events.py``): one point per step, the newest, as in results.json."""
    step = global_step(results)

    def write(writer: SummaryWriter) -> None:
        for mode, r in results["modes"].items():
            headline = r["iqm"] if mode == "member" else r
            writer.add_scalar(f"eval/{mode}_return", headline["return"], step)
            writer.add_scalar(f"eval/{mode}_success", headline["success"], step)
            writer.add_scalar(f"eval/{mode}_normalised", headline["normalised"], step)
        expgen = results["modes"].get("expgen")
        if expgen is not None:
            writer.add_scalar("expgen/explore_fraction", expgen["explore_fraction"], step)
            writer.add_scalar("expgen/agreement", expgen["agreement"], step)
            _vote_histogram(writer, expgen["vote_histogram"], step)
        writer.add_text("eval/summary", markdown_table(results), step)

    return write_replacing_steps(folder, write)


def _vote_histogram(writer: SummaryWriter, counts: list[int], step: int) -> None:
    """Exact histogram of vote counts 0..M: one bucket per count, right edges at v + 0.5."""
    hist = np.asarray(counts, dtype=np.float64)
    if hist.sum() == 0:
        return
    votes = np.arange(len(hist), dtype=np.float64)
    present = np.flatnonzero(hist)
    writer.add_histogram_raw(
        "expgen/votes", min=float(votes[present[0]]), max=float(votes[present[-1]]),
        num=int(hist.sum()), sum=float((votes * hist).sum()), sum_squares=float((votes**2 * hist).sum()),
        bucket_limits=(votes + 0.5).tolist(), bucket_counts=hist.tolist(), global_step=step,
    )


def _write_text(path: Path, text: str) -> None:
    """Whole or not at all: an interrupted write leaves the previous file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_report(results: dict[str, Any], layout: RunLayout, episodes: pd.DataFrame | None = None
                 ) -> dict[str, Path]:
    """Write results.json, results.md, results.png, episodes.csv (``episodes``: the per-episode
    records, ``evaluation/records.py``) and TensorBoard events into the run's eval/ (``eval/<name>/``
    for a named evaluation). results.json comes last: the TensorBoard point of its step and the
    files beside it are already the ones it describes (without ``episodes``, an older episodes.csv
    is removed rather than left to describe another evaluation)."""
    name = results.get("name", "")
    out_dir = layout.eval(name)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "results.json", "markdown": out_dir / "results.md",
             "plot": out_dir / "results.png", "episodes": out_dir / EPISODES_CSV,
             "tensorboard": layout.eval_tb(results["split"], name)}
    write_tensorboard(results, paths["tensorboard"])
    if episodes is None:
        paths.pop("episodes").unlink(missing_ok=True)
    else:
        write_episode_table(episodes, paths["episodes"])
    _write_text(paths["markdown"], markdown_table(results))
    plot_results(results, paths["plot"])
    _write_text(paths["json"], json.dumps(results, indent=2) + "\n")
    return paths
