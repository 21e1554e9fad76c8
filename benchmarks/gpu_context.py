"""The stage framework of ``benchmarks/gpu_suite.sh``: what every stage's process shares (the
config it measures, the sizes of a dry run, ``Context`` with its ``save``, the timing helpers) and
where results go on disk. The stages themselves are in gpu_checks.py (imports, CUDA tests),
gpu_jobs.py (configs/maze.yaml's jobs and the projection) and gpu_update.py (the members' update,
the explorer's GRU replay, the learning check); gpu_stages.py orders them; gpu_suite.py runs them.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
JSON_NAME, LOG_NAME = "gpu_suite.json", "gpu_suite.log"
CONFIG = ROOT / "configs" / "maze.yaml"
MARGIN_S = 3.0  # kept back from the budget for the last JSON write
TAIL_CHARS = 2000

# Everything runs with ray=false (the jobs themselves are measured, and the machine need not have
# Ray); no held-out evaluation in a measurement's timed window. Nothing else is overridden: the
# stages measure the config's own precision, TF32, forward mode, compile, acting and pipeline
# unless a stage says otherwise (its ``overrides``, saved with its results).
BASE = ["ray=false", "logging.eval_interval=0", "logging.progress=false"]
GPU = ["device=cuda"]
DRY = ["device=cpu", "network.kind=small", "env.num_envs=4", "ppo.num_steps=16", "ppo.num_minibatches=2",
       "ppo.epochs=1", "explorer.buffer_size=16", "ensemble.size=2"]


class StageFailed(RuntimeError):
    """A stage's check failed; its message is the stage's reason."""


class Context:
    """What a stage function gets: the mode, its scratch folder, the suite's results so far, the
    timed window of one measurement (``seconds``), and ``save`` for its own results (written at
    once, so a stage stopped at its limit keeps them)."""

    def __init__(self, name: str, scratch: Path, suite: dict[str, Any], dry: bool, seconds: float) -> None:
        self.name, self.scratch, self.suite, self.dry, self.seconds = name, scratch, suite, dry, seconds
        self.result: dict[str, Any] = {}

    def save(self, **items: Any) -> None:
        self.result.update(items)
        write_json(result_path(self.scratch, self.name), self.result)

    def previous(self, name: str) -> dict[str, Any]:
        """An earlier stage's result ({} if it did not run or saved nothing)."""
        for s in self.suite.get("stages", []):
            if s["name"] == name:
                return s.get("result") or {}
        return {}

    def config(self, *overrides: str):
        """configs/maze.yaml with BASE, the device's sizes (GPU, or DRY's tiny ones) and ``overrides``."""
        from core.config import load_config

        return load_config(CONFIG, [*BASE, *(DRY if self.dry else GPU), f"runs_dir={self.scratch / 'runs'}",
                                    *overrides], name="gpu_suite")


def device_sync(device: Any) -> Callable[[], None]:
    import torch

    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def timed(fn: Callable[[], Any], seconds: float, sync: Callable[[], None]) -> list[float]:
    """Wall seconds of each call of ``fn`` (the device synchronised before and after), after one
    warm-up call (cuDNN autotuning, the allocator), calling until ``seconds`` have passed (once at least)."""
    fn()
    sync()
    times: list[float] = []
    while not times or sum(times) < seconds:
        begin = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - begin)
    return times


def write_json(path: Path, data: dict[str, Any]) -> None:
    """``data`` as indented JSON at ``path``, atomically (a reader never sees half a file)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def result_path(scratch: Path, name: str) -> Path:
    """Where stage ``name`` saves its results in the suite's scratch folder."""
    return scratch / f"{name}.result.json"
