"""The live console table of a Ray run: one row per trial (population shard or explorer).

A Tune callback, so it runs in the driver and sees every trial's state and last report; rich
redraws the table in place.
"""
from __future__ import annotations

import sys
import time
from typing import Any

from ray.tune import Callback
from rich.console import Console
from rich.live import Live
from rich.table import Table

from core.config import Config
from launch.jobs import Job
from launch.progress import LINE_INTERVAL_S


COLUMNS = ("agent", "state", "steps", "SPS", "return", "test", "restarts")


def _number(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


class TrialTable(Callback):
    """Steps, steps/s, return, held-out return, state and restarts of every trial, redrawn live."""

    def __init__(self, cfg: Config, jobs: list[Job], refresh_s: float = 1.0) -> None:
        self.totals = {j.name: cfg.final_step(j.explorer) for j in jobs}
        self.title = f"{cfg.name}: {len(jobs)} trials on Ray"
        self.refresh_s, self.last_draw = refresh_s, 0.0
        self.live: Live | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks with the experiment state; a live display holds locks.
        return {**self.__dict__, "live": None}

    def rows(self, trials: list) -> list[tuple[str, ...]]:
        """Per trial: agent, state, steps, SPS, return, test return, restarts (``COLUMNS``)."""
        out = []
        for trial in sorted(trials, key=lambda t: t.config["job"]):
            name, res = trial.config["job"], trial.last_result or {}
            out.append((name, trial.status, f"{res.get('steps', 0):,} / {self.totals[name]:,}",
                        _number(res.get("sps"), ",.0f"), _number(res.get("episodic_return"), ".2f"),
                        _number(res.get("test_return"), ".2f"), str(trial.num_failures)))
        return out

    def render(self, trials: list) -> Table:
        table = Table(title=self.title)
        for col in COLUMNS:
            table.add_column(col, justify="left" if col in ("agent", "state") else "right", no_wrap=True)
        for row in self.rows(trials):
            table.add_row(*row)
        return table

    def setup(self, **info: Any) -> None:
        if sys.stderr.isatty():
            self.live = Live(self.render([]), console=Console(stderr=True), auto_refresh=False)
            self.live.start()

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        now = time.monotonic()
        if self.live is not None and now - self.last_draw >= self.refresh_s:
            self.live.update(self.render(trials), refresh=True)
            self.last_draw = now
        elif self.live is None and now - self.last_draw >= LINE_INTERVAL_S:
            # Off a terminal (a file, CI): one plain line per trial instead of a redrawn table.
            self.last_draw = now
            for name, state, steps, sps, ret, test, restarts in self.rows(trials):
                print(f"{name}: {state}, {steps} steps, {sps} steps/s, return {ret}, test {test}, "
                      f"restarts {restarts}", file=sys.stderr, flush=True)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if self.live is not None:
            self.live.update(self.render(trials), refresh=True)
            self.live.stop()
