"""Train everything a run's config asks for, into the run directory of DESIGN.md.

The ensemble is split into population shards of ``population.size`` members (0 = all together);
each shard is one ``PopulationTrainer``. Shards run one after another in this process.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from agents.checkpoint import checkpoint_steps
from agents.config import Config, save_config
from agents.progress import Progress
from agents.explorer import ExplorerTrainer, explorer_dir
from agents.trainer import PopulationTrainer, Trainer, member_dir, resolve_device

log = logging.getLogger("expgen")


def shards(cfg: Config) -> list[list[int]]:
    """Member indices grouped into populations of ``population.size``."""
    members = list(range(cfg.ensemble.size))
    size = cfg.population.size or len(members)
    return [members[i : i + size] for i in range(0, len(members), size)]


def agent_dirs(cfg: Config) -> list[Path]:
    dirs = [member_dir(cfg, m) for m in range(cfg.ensemble.size)]
    return dirs + ([explorer_dir(cfg)] if cfg.explorer.enabled else [])


def has_checkpoints(cfg: Config) -> bool:
    return any(checkpoint_steps(d) for d in agent_dirs(cfg))


def train_agents(trainer: Trainer) -> dict[str, Any]:
    """Resume ``trainer`` from its newest checkpoints if any, train it to its budget, close it."""
    cfg = trainer.cfg
    try:
        names = ", ".join(d.name for d in trainer.agent_dirs)
        if trainer.restore():
            log.info("%s: resuming at step %d", names, trainer.global_step)
        total = trainer.num_updates * trainer.steps_per_update
        progress = Progress(total, names, trainer.global_step, cfg.logging.progress)
        try:
            start = time.perf_counter()
            summary = trainer.train(progress)
        finally:
            progress.close()
        summary["wall_s"] = time.perf_counter() - start
        return summary
    finally:
        trainer.close()


def train_run(cfg: Config, require_resume: bool = False) -> list[dict[str, Any]]:
    """Train (or continue) every agent of the run; returns one summary per shard."""
    if require_resume and not has_checkpoints(cfg):
        raise FileNotFoundError(
            f"--resume: no checkpoints under {cfg.run_dir}; drop --resume to start a new run"
        )
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    save_config(cfg, cfg.run_dir / "config.yaml")
    summaries = [train_agents(PopulationTrainer(cfg, members, device)) for members in shards(cfg)]
    if cfg.explorer.enabled:
        summaries.append(train_agents(ExplorerTrainer(cfg, device)))
    return summaries
