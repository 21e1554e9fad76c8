"""The live console table of jobs training side by side: one row per job (population shard or
explorer), whether the jobs are Ray Tune trials (``launch.ray_trials.TrialTable`` feeds it from
Tune's callbacks) or child processes of this one (launch/side_by_side.py).

On a terminal, rich redraws the table in place; off a terminal (a file, CI), one plain line per
job every ``LINE_INTERVAL_S`` seconds. Both show, after the training return, the mean held-out
return of each split the jobs evaluate on (``logging.eval_splits`` but train, or train when it is
the only one), headed by the split's name: ``test-full`` in the quickstart, ``test`` elsewhere.
"""
from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from core.config import Config
from launch.jobs import Job
from launch.progress import LINE_INTERVAL_S, duration


def heldout_splits(cfg: Config) -> list[str]:
    """The splits whose held-out return the table shows: those of ``logging.eval_splits`` other
    than train (the levels the agents train on), or train alone when it is the only one."""
    splits = list(dict.fromkeys(cfg.logging.eval_splits))
    return [s for s in splits if s != "train"] or splits


def _number(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


class JobTable:
    """Steps, steps/s, return, held-out return, state and restarts of every job, redrawn live."""

    def __init__(self, cfg: Config, jobs: list[Job], title: str, refresh_s: float = 1.0) -> None:
        self.totals = {j.name: cfg.final_step(j.explorer) for j in jobs}
        self.splits = heldout_splits(cfg)
        self.columns = ("agent", "state", "steps", "SPS", "return", *self.splits, "restarts")
        self.title = title
        self.refresh_s, self.last_draw = refresh_s, 0.0
        self.live: Live | None = None
        self.printed: list[tuple[str, ...]] = []  # the last lines printed off a terminal

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks with the experiment state; a live display holds locks.
        return {**self.__dict__, "live": None}

    def row(self, name: str, state: str, result: dict[str, Any], restarts: int) -> tuple[str, ...]:
        """agent, state, steps, SPS, return, the held-out return of each of ``splits``, restarts
        (``columns``) from a job's last report (the keys of ``launch.jobs.report_metrics``:
        ``<split>_return``)."""
        return (name, state, f"{result.get('steps', 0):,} / {self.totals[name]:,}",
                _number(result.get("sps"), ",.0f"), _number(result.get("episodic_return"), ".2f"),
                *(_number(result.get(f"{split}_return"), ".2f") for split in self.splits), str(restarts))

    def render(self, rows: list[tuple[str, ...]]) -> Table:
        table = Table(title=self.title)
        for col in self.columns:
            table.add_column(col, justify="left" if col in ("agent", "state") else "right", no_wrap=True)
        for row in rows:
            table.add_row(*row)
        return table

    def start(self) -> None:
        if sys.stderr.isatty():
            self.live = Live(self.render([]), console=Console(stderr=True), auto_refresh=False)
            self.live.start()

    def show(self, rows: list[tuple[str, ...]]) -> None:
        now = time.monotonic()
        if self.live is not None and now - self.last_draw >= self.refresh_s:
            self.live.update(self.render(rows), refresh=True)
            self.last_draw = now
        elif self.live is None and now - self.last_draw >= LINE_INTERVAL_S:
            self.last_draw, self.printed = now, rows
            for row in rows:
                print(self.line(row), file=sys.stderr, flush=True)

    def line(self, row: tuple[str, ...]) -> str:
        """A row as one line of text (off a terminal)."""
        name, state, steps, sps, ret, *heldout, restarts = row
        tests = "".join(f", {split} {value}" for split, value in zip(self.splits, heldout))
        return f"{name}: {state}, {steps} steps, {sps} steps/s, return {ret}{tests}, restarts {restarts}"

    def stop(self, rows: list[tuple[str, ...]]) -> None:
        """The final table; off a terminal, every job's final line."""
        if self.live is not None:
            self.live.update(self.render(rows), refresh=True)
            self.live.stop()
            self.live = None
            return
        if rows != self.printed:
            self.last_draw = float("-inf")
            self.show(rows)


def _states(states: list[str]) -> str:
    """``2 running, 1 pending`` from jobs' states (Tune's RUNNING, PENDING, TERMINATED, ERROR...)."""
    words = {"TERMINATED": "done"}
    counts: dict[str, int] = {}
    for state in states:
        word = words.get(state, state.lower())
        counts[word] = counts.get(word, 0) + 1
    return ", ".join(f"{n} {word}" for word, n in counts.items())


class RunTable(JobTable):
    """A sweep's table: one row per run (its jobs' states, its agents' steps done of their budgets,
    its steps/s, its restarts), and a last row for all runs with the time so far and the time left
    at the rate so far. A single run gets ``JobTable``'s row per job instead."""

    def __init__(self, runs: dict[str, tuple[Config, list[Job]]], title: str, refresh_s: float = 1.0) -> None:
        self.runs = runs
        first, jobs = next(iter(runs.values()))
        super().__init__(first, jobs, title, refresh_s)
        if len(runs) > 1:
            self.columns = ("run", "state", "trained", "SPS", "restarts")
            # Progress in agent-steps: a job of 10 members at step s has done 10 s of its 10 x budget.
            self.agents = {f"{name}/{j.name}": 1 if j.explorer else len(j.members)
                           for name, (_, jobs) in runs.items() for j in jobs}
            self.budgets = {f"{name}/{j.name}": cfg.final_step(j.explorer) * self.agents[f"{name}/{j.name}"]
                            for name, (cfg, jobs) in runs.items() for j in jobs}
            self.started = time.monotonic()
            self.first_progress: float | None = None  # the work done when the first report came

    def rows_of(self, jobs: dict[str, tuple[str, dict[str, Any], int]]) -> list[tuple[str, ...]]:
        """Rows from each job's (state, last report, restarts), keyed ``<run>/<job>``."""
        if len(self.runs) == 1:
            return [self.row(key.rpartition("/")[2], *jobs[key]) for key in sorted(jobs)]
        rows, done_all = [], 0.0
        for name in self.runs:
            keys = [k for k in jobs if k.rpartition("/")[0] == name]
            done = sum(jobs[k][1].get("steps", 0) * self.agents[k] for k in keys)
            done_all += done
            rows.append(self.run_row(name, [jobs[k] for k in keys], done, sum(self.budgets[k] for k in keys)))
        total = sum(self.budgets[k] for k in jobs)
        everything = self.run_row(f"all {len(self.runs)} runs", list(jobs.values()), done_all, total)
        rows.append(everything + (self.eta(done_all / total),))
        return rows

    def run_row(self, name: str, jobs: list[tuple[str, dict[str, Any], int]], done: float, total: float) -> tuple[str, ...]:
        sps = sum(result.get("sps") or 0.0 for state, result, _ in jobs if state == "RUNNING")
        return (name, _states([state for state, _, _ in jobs]), f"{100 * done / max(total, 1):.0f}%",
                f"{sps:,.0f}", str(sum(restarts for _, _, restarts in jobs)))

    def eta(self, fraction: float) -> str:
        """Elapsed time, and the time left if the work goes on at its rate since the first report."""
        elapsed = time.monotonic() - self.started
        if self.first_progress is None and fraction > 0:
            self.first_progress, self.first_at = fraction, elapsed
        if self.first_progress is None or fraction <= self.first_progress:
            return f"{duration(elapsed)} so far"
        rate = (fraction - self.first_progress) / (elapsed - self.first_at)
        return f"{duration(elapsed)} so far, {duration((1 - fraction) / rate)} left at this rate"

    def render(self, rows: list[tuple[str, ...]]) -> Table:
        if len(self.runs) == 1:
            return super().render(rows)
        table = Table(title=self.title)
        for col in (*self.columns, "time"):
            table.add_column(col, justify="left" if col in ("run", "state", "time") else "right", no_wrap=True)
        for row in rows:
            table.add_row(*row, *([""] if len(row) == len(self.columns) else []))
        return table

    def line(self, row: tuple[str, ...]) -> str:
        if len(self.runs) == 1:
            return super().line(row)
        name, state, progress, sps, restarts, *when = row
        return f"{name}: {state}, {progress} trained, {sps} steps/s, restarts {restarts}" + "".join(
            f", {w}" for w in when)
