"""Ctrl-C during training: the loop finishes and checkpoints the iteration in flight, then stops."""
from __future__ import annotations

import signal
import threading
from typing import Any


class DeferredInterrupt:
    """Ctrl-C takes effect at the end of the iteration in flight, which is then checkpointed, so
    the saved state is always that of a whole iteration and a resumed run replays the interrupted
    one exactly. A second Ctrl-C interrupts at once (the newest checkpoint stays as it was).
    Only the main thread receives signals; elsewhere (a Ray trial) this does nothing."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> "DeferredInterrupt":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, self._previous)

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
