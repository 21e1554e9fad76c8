"""Where an iteration's time goes: wall time per phase (env stepping, inference, transfers,
reward, update), for the breakdown of benchmarks/full_run.py.

Off by default, a phase costs one attribute test. Switched on, the clock synchronises the device
when a phase starts and ends, so that asynchronous GPU work is charged to the phase that launched
it. That synchronisation also serialises what ``env.pipeline=overlap`` overlaps, so a breakdown
describes the serial schedule; the overlap's gain is measured by timing whole iterations.
"""
from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Iterator

import torch

PHASES = ("env", "inference", "transfer", "reward", "update")


class PhaseClock:
    def __init__(self, device: torch.device) -> None:
        self.enabled = False
        self.seconds: dict[str, float] = defaultdict(float)
        self._sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        self._open: str | None = None

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        # A phase inside another (a transfer inside env handling) is charged to the outer one only.
        if not self.enabled or self._open is not None:
            yield
            return
        self._sync()
        self._open, start = phase, time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds[phase] += time.perf_counter() - start
            self._open = None
