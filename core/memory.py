"""Keep glibc from handing large tensor buffers back to the kernel between uses.

PPO allocates and frees the same few hundred-megabyte activation buffers every minibatch. glibc
serves allocations above 32 MB with a fresh ``mmap`` and unmaps them on ``free``, so every
minibatch page-faults its activations in again: measured on the 2-core CPU, half of a training
step's time was kernel time. Serving everything from the heap and never trimming it makes the
buffers reusable, roughly doubling the IMPALA update speed there. The cost is that the process
keeps its peak memory until it exits, which is what a training process does anyway.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_done = False


def tune_allocator() -> bool:
    """Apply the glibc settings once per process; a no-op (False) where glibc is absent."""
    global _done
    if _done or not sys.platform.startswith("linux"):
        return _done
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        # mallopt takes an int but stores the threshold as size_t: -1 means "never trim". Any
        # positive int caps it at 2 GB, below the ~4 GB an IMPALA minibatch frees at once.
        ok = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, -1) == 1
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    _done = ok
    return ok
