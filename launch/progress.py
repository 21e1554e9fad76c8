"""Training progress: a tqdm bar on a terminal; off a terminal (a file, CI), one line per job every
``interval_s`` seconds, so a piped or logged run is never silent for minutes."""
from __future__ import annotations

import sys
import time
from collections import deque

from tqdm.auto import tqdm

from training.loop import Progress

LINE_INTERVAL_S = 30.0


def duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


class ProgressBar(Progress):
    def __init__(self, total: int, desc: str, initial: int = 0, enabled: bool = True,
                 interval_s: float | None = None) -> None:
        self.total, self.done, self.desc, self.enabled = total, initial, desc, enabled
        self.recent: deque[float] = deque(maxlen=10)
        self.lines = enabled and not sys.stderr.isatty()
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step", unit_scale=True,
                        disable=not enabled or self.lines, dynamic_ncols=True)
        self.interval_s = LINE_INTERVAL_S if interval_s is None else interval_s
        self.start = self.last_line = time.monotonic()
        self.start_steps = initial
        if self.lines:
            print(f"{desc}: {initial:,} / {total:,} steps", file=sys.stderr, flush=True)

    def advance(self, steps: int, sps: float, mean_return: float | None) -> None:
        if mean_return is not None:
            self.recent.append(mean_return)
        ret = f"{sum(self.recent) / len(self.recent):.2f}" if self.recent else "-"
        self.done += steps
        if not self.lines:
            self.bar.set_postfix_str(f"SPS={sps:,.0f} return={ret}")
            self.bar.update(steps)
            return
        now = time.monotonic()
        if now - self.last_line >= self.interval_s or self.done >= self.total:
            self.last_line = now
            rate = (self.done - self.start_steps) / max(now - self.start, 1e-9)
            eta = duration((self.total - self.done) / rate) if rate > 0 else "-"
            print(f"{self.desc}: {self.done:,} / {self.total:,} steps ({100 * self.done / self.total:.0f}%), "
                  f"{sps:,.0f} steps/s, return {ret}, ETA {eta}", file=sys.stderr, flush=True)

    def close(self) -> None:
        self.bar.close()
