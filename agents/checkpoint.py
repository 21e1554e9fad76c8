"""Checkpoints: one file per agent per save, written atomically, read back with clear errors.

Layout (DESIGN.md): ``runs/<name>/<agent>/checkpoints/ckpt_<step>.pt``. A checkpoint is a dict with
``format``, ``network`` (the NetworkSpec fields), ``model`` (a plain ActorCritic state dict) and
``step``; training state (optimiser, generators, env states) rides along for resuming. eval.py
needs only the first four, whichever engine wrote the file.
"""
from __future__ import annotations

import os
import re
import tempfile
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from agents.networks import NetworkSpec

FORMAT = "expgen-agent/1"
_NAME = re.compile(r"ckpt_(\d+)\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or not ours; the message says which file and why."""


def checkpoint_dir(agent_dir: Path) -> Path:
    return Path(agent_dir) / "checkpoints"


def save_checkpoint(agent_dir: Path, step: int, payload: dict[str, Any], keep: int = 3) -> Path:
    """Write ``payload`` as ``ckpt_<step>.pt`` via temp file + fsync + rename, keep the newest ``keep``.

    A crash at any moment leaves either the old set of files or the old set plus a complete new
    file: never a truncated ``ckpt_*.pt``.
    """
    folder = checkpoint_dir(agent_dir)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"ckpt_{step:012d}.pt"
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp_", suffix=".pt")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, "step": step, **payload}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    for old in list_checkpoints(agent_dir)[keep:]:
        old.unlink(missing_ok=True)
    return final


def list_checkpoints(agent_dir: Path) -> list[Path]:
    """Checkpoint files of an agent, newest (highest step) first."""
    folder = checkpoint_dir(agent_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.search(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # torch raises many types for truncated or foreign files
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a PyTorch file ({type(e).__name__}: {e}); "
            "delete it to fall back to an older one"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an ExpGen agent checkpoint (expected format {FORMAT})")
    return ckpt


def load_latest(agent_dir: Path, map_location: str | torch.device = "cpu", max_step: int | None = None
                ) -> dict[str, Any] | None:
    """The newest readable checkpoint (at most ``max_step``), skipping corrupt ones with a warning."""
    for path in list_checkpoints(agent_dir):
        if max_step is not None and int(_NAME.search(path.name).group(1)) > max_step:
            continue
        try:
            return load_checkpoint(path, map_location)
        except CheckpointError as e:
            warnings.warn(f"skipping unreadable checkpoint: {e}", stacklevel=2)
    return None


def checkpoint_steps(agent_dir: Path) -> list[int]:
    return [int(_NAME.search(p.name).group(1)) for p in list_checkpoints(agent_dir)]


def network_payload(spec: NetworkSpec, model: dict[str, torch.Tensor]) -> dict[str, Any]:
    return {"network": asdict(spec), "model": model}


def spec_from_checkpoint(ckpt: dict[str, Any]) -> NetworkSpec:
    net = dict(ckpt["network"])
    net["channels"] = tuple(net["channels"])
    return NetworkSpec(**net)


def load_agent_network(agent_dir: Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """The newest valid network of an agent, in eval mode, with its checkpoint dict."""
    ckpt = load_latest(agent_dir, device)
    if ckpt is None:
        raise CheckpointError(
            f"no readable checkpoint in {checkpoint_dir(agent_dir)}; train the agent first"
        )
    net = spec_from_checkpoint(ckpt).build().to(device)
    net.load_state_dict(ckpt["model"])
    return net.eval(), ckpt
