"""Checkpoints: one file per agent per save, written atomically, read back without running code.

A checkpoint is a dict with ``format``, ``step``, ``network`` (the NetworkSpec fields) and
``model`` (a plain ActorCritic state dict); training state (optimiser, generators, env states)
rides along for resuming. eval.py needs only the first four, whichever engine wrote the file.
Files live in an agent's ``checkpoints/`` folder (core/run_layout.py) as ``ckpt_<step>.pt``.

Safety: files are read with ``torch.load(weights_only=True)``, whose unpickler builds only tensors
and plain containers, so a planted file cannot execute anything. What resuming needs beyond that
(numpy arrays of env and generator states) is stored as tensors tagged with ``__ndarray__`` and
turned back into arrays on load. A file that needs anything else is refused like a corrupt one,
and the previous checkpoint is used.
"""
from __future__ import annotations

import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT = "expgen-agent/1"
_NAME = re.compile(r"ckpt_(\d+)\.pt$")
_NDARRAY = "__ndarray__"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or not ours; the message says which file and why."""


def encode(obj: Any) -> Any:
    """``obj`` with numpy arrays and scalars replaced by what the safe unpickler can build."""
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            raise TypeError("object arrays cannot be stored in a checkpoint")
        return {_NDARRAY: torch.from_numpy(obj.copy(order="C"))}  # copy keeps 0-d shapes
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: encode(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(encode(v) for v in obj)
    return obj


def decode(obj: Any) -> Any:
    """The inverse of ``encode``."""
    if isinstance(obj, dict):
        if len(obj) == 1 and _NDARRAY in obj:
            return obj[_NDARRAY].numpy()
        return {k: decode(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(decode(v) for v in obj)
    return obj


def save_checkpoint(folder: Path, step: int, payload: dict[str, Any], keep: int = 3) -> Path:
    """Write ``payload`` as ``folder/ckpt_<step>.pt`` via temp file + fsync + rename; keep the
    newest ``keep``. A crash at any moment leaves either the old set of files or the old set plus
    a complete new file: never a truncated ``ckpt_*.pt``. A write that fails (a full disk, a
    folder that became read-only) removes its temporary, keeps the previous checkpoints and raises
    ``CheckpointError`` naming the file."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"ckpt_{step:012d}.pt"
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp_", suffix=".pt")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(encode({"format": FORMAT, "step": step, **payload}), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        # torch reports a failed write as RuntimeError ("[enforce fail at inline_container.cc]").
        if isinstance(e, (OSError, RuntimeError)):
            raise CheckpointError(f"disk full or not writable: could not write checkpoint {final} ({e}); "
                                  "the previous checkpoints are kept, free space and re-run to resume") from e
        raise
    for old in list_checkpoints(folder)[keep:]:
        old.unlink(missing_ok=True)
    return final


def remove_stale_temporaries(folder: Path) -> int:
    """Delete the temporary files a process killed mid-write left behind; returns how many.
    Call only while holding the run's lock: a running writer's temporary is not stale."""
    folder = Path(folder)
    stale = list(folder.glob(".tmp_*.pt")) if folder.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


def list_checkpoints(folder: Path) -> list[Path]:
    """Checkpoint files in ``folder``, newest (highest step) first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.search(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def checkpoint_steps(folder: Path) -> list[int]:
    return [int(_NAME.search(p.name).group(1)) for p in list_checkpoints(folder)]


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for truncated, foreign or unsafe files
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        unsafe = "weights_only" in str(e) or "Unsupported global" in str(e)
        why = ("it holds objects other than tensors and plain containers, which are never loaded "
               "(loading them could run code)" if unsafe else f"corrupt or not a PyTorch file "
               f"({type(e).__name__}: {first})")
        raise CheckpointError(f"checkpoint {path} refused: {why}; delete it to fall back to an "
                              "older one") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an ExpGen agent checkpoint (expected format {FORMAT})")
    return decode(ckpt)


# Planning asks which checkpoints load on every invocation; a file's answer is kept while its size
# and modification time stay the same.
_LOADS: dict[tuple[str, int, int], bool] = {}


def newest_readable_step(folder: Path) -> int | None:
    """The step of the newest checkpoint in ``folder`` that loads (``load_checkpoint``), or None:
    the step an agent resumes from. Unreadable files are skipped silently (``load_latest`` warns
    when it skips them for real)."""
    for path in list_checkpoints(folder):
        try:
            st = path.stat()
        except FileNotFoundError:  # deleted since listed (a running job keeps only its newest few)
            continue
        key = (str(path), st.st_mtime_ns, st.st_size)
        if key not in _LOADS:
            try:
                load_checkpoint(path)
                _LOADS[key] = True
            except CheckpointError:
                _LOADS[key] = False
        if _LOADS[key]:
            return int(_NAME.search(path.name).group(1))
    return None


def load_latest(folder: Path, map_location: str | torch.device = "cpu", max_step: int | None = None
                ) -> dict[str, Any] | None:
    """The newest readable checkpoint (at most ``max_step``), skipping bad ones with a warning."""
    for path in list_checkpoints(folder):
        if max_step is not None and int(_NAME.search(path.name).group(1)) > max_step:
            continue
        try:
            return load_checkpoint(path, map_location)
        except CheckpointError as e:
            warnings.warn(f"skipping unreadable checkpoint: {e}", stacklevel=2)
    return None
