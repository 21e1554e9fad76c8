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
from launch.progress import LINE_INTERVAL_S


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
            for name, state, steps, sps, ret, *heldout, restarts in rows:
                tests = "".join(f", {split} {value}" for split, value in zip(self.splits, heldout))
                print(f"{name}: {state}, {steps} steps, {sps} steps/s, return {ret}{tests}, "
                      f"restarts {restarts}", file=sys.stderr, flush=True)

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
