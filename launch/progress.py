"""The training progress bar: steps, steps/s and the recent return, via tqdm."""
from __future__ import annotations

from collections import deque

from tqdm.auto import tqdm

from training.loop import Progress


class ProgressBar(Progress):
    def __init__(self, total: int, desc: str, initial: int = 0, enabled: bool = True) -> None:
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step", unit_scale=True,
                        disable=not enabled, dynamic_ncols=True)
        self.recent: deque[float] = deque(maxlen=10)

    def advance(self, steps: int, sps: float, mean_return: float | None) -> None:
        if mean_return is not None:
            self.recent.append(mean_return)
        ret = f"{sum(self.recent) / len(self.recent):.2f}" if self.recent else "-"
        self.bar.set_postfix_str(f"SPS={sps:,.0f} return={ret}")
        self.bar.update(steps)

    def close(self) -> None:
        self.bar.close()
