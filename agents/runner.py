"""Train everything a run's config asks for, into the run directory of DESIGN.md.

The run is planned as jobs: population shards of ``population.size`` reward agents (0 = all
together; the sb3 and rllib engines train one member per job) and the explorer. With ``ray: true``
every job is a Ray Tune trial (agents/distributed.py); with ``ray: false`` jobs run here, one
after another. Either way a job resumes from its newest checkpoints and a finished job is skipped.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from agents.checkpoint import checkpoint_steps, load_latest
from agents.config import Config, save_config
from agents.progress import Progress
from agents.explorer import ExplorerTrainer, explorer_dir
from agents.trainer import PopulationTrainer, Trainer, member_dir, resolve_device

log = logging.getLogger("expgen")


@dataclass(frozen=True)
class Job:
    """One unit of training: reward agents ``members`` trained together, or the explorer."""

    kind: str  # "members" | "explorer"
    members: tuple[int, ...] = ()

    @property
    def name(self) -> str:
        if self.kind == "explorer":
            return "explorer"
        first, last = self.members[0], self.members[-1]
        return f"member_{first}" if first == last else f"members_{first}-{last}"


def shards(cfg: Config) -> list[list[int]]:
    """Member indices grouped into populations of ``population.size`` (one each for sb3/rllib,
    whose PPO trains one network at a time)."""
    members = list(range(cfg.ensemble.size))
    size = 1 if cfg.engine != "native" else cfg.population.size or len(members)
    return [members[i : i + size] for i in range(0, len(members), size)]


def plan(cfg: Config) -> list[Job]:
    jobs = [Job("members", tuple(s)) for s in shards(cfg)]
    return jobs + ([Job("explorer")] if cfg.explorer.enabled else [])


def job_dirs(cfg: Config, job: Job) -> list[Path]:
    return [explorer_dir(cfg)] if job.kind == "explorer" else [member_dir(cfg, m) for m in job.members]


def job_total_steps(cfg: Config, job: Job) -> int:
    """The step count a job ends at: its budget rounded up to whole updates."""
    per_update = cfg.ppo.num_steps * cfg.env.num_envs
    budget = cfg.explorer.total_steps if job.kind == "explorer" else cfg.ppo.total_steps
    return -(-budget // per_update) * per_update


def job_finished(cfg: Config, job: Job) -> bool:
    """Every agent of the job has a checkpoint at its final step."""
    total = job_total_steps(cfg, job)
    return all(total in checkpoint_steps(d) for d in job_dirs(cfg, job))


def pending_jobs(cfg: Config) -> list[Job]:
    """The jobs still to train; finished ones are logged as skipped."""
    pending = []
    for job in plan(cfg):
        if job_finished(cfg, job):
            log.info("%s: already trained to its budget, skipped", job.name)
        else:
            pending.append(job)
    return pending


def agent_dirs(cfg: Config) -> list[Path]:
    return [d for job in plan(cfg) for d in job_dirs(cfg, job)]


def has_checkpoints(cfg: Config) -> bool:
    return any(checkpoint_steps(d) for d in agent_dirs(cfg))


def build_trainer(cfg: Config, job: Job, device: torch.device) -> Trainer:
    if job.kind == "explorer":
        return ExplorerTrainer(cfg, device)
    if cfg.engine == "sb3":
        from agents.sb3_engine import SB3Trainer  # imported only when asked for

        return SB3Trainer(cfg, job.members[0], device)
    if cfg.engine == "rllib":
        from agents.rllib_engine import RLlibTrainer

        return RLlibTrainer(cfg, job.members[0], device)
    return PopulationTrainer(cfg, list(job.members), device)


def train_job(cfg: Config, job: Job, device: torch.device, progress: bool = True,
              on_iteration: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Resume a job from its newest checkpoints if any, train it to its budget, close it."""
    trainer = build_trainer(cfg, job, device)
    try:
        if trainer.restore():
            log.info("%s: resuming at step %d", job.name, trainer.global_step)
        total = trainer.num_updates * trainer.steps_per_update
        bar = Progress(total, job.name, trainer.global_step, progress)
        start = time.perf_counter()
        try:
            summary = trainer.train(bar, on_iteration)
        finally:
            bar.close()
        return {**summary, "job": job.name, "wall_s": time.perf_counter() - start}
    finally:
        trainer.close()


def train_in_process(cfg: Config) -> list[dict[str, Any]]:
    """``ray: false``: the unfinished jobs one after another in this process."""
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    return [train_job(cfg, job, device, cfg.logging.progress) for job in pending_jobs(cfg)]


def run_summary(cfg: Config, trained: list[dict[str, Any]], wall_s: float) -> dict[str, Any]:
    """Per agent, from its newest checkpoint: steps and the last held-out returns; per job, the
    wall time this invocation spent on it (0 for jobs that were already finished)."""
    job_wall = {s["job"]: s["wall_s"] for s in trained}
    agents = []
    for job in plan(cfg):
        for d in job_dirs(cfg, job):
            ckpt = load_latest(d) or {}
            heldout = {f"{split}_return": value for split, value in ckpt.get("heldout", {}).items()}
            agents.append({"agent": d.name, "job": job.name, "steps": ckpt.get("step", 0),
                           "job_wall_s": job_wall.get(job.name, 0.0), **heldout})
    summary = {"run_dir": str(cfg.run_dir), "wall_s": wall_s, "ray": cfg.ray, "agents": agents}
    (cfg.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def train_run(cfg: Config, require_resume: bool = False) -> dict[str, Any]:
    """Train (or continue) every agent of the run; returns the run summary (``run_summary``)."""
    if require_resume and not has_checkpoints(cfg):
        raise FileNotFoundError(
            f"--resume: no checkpoints under {cfg.run_dir}; drop --resume to start a new run"
        )
    save_config(cfg, cfg.run_dir / "config.yaml")
    start = time.perf_counter()
    if cfg.ray:
        from agents.distributed import train_with_ray  # Ray is imported only when it is used

        trained = train_with_ray(cfg)
    else:
        trained = train_in_process(cfg)
    return run_summary(cfg, trained, time.perf_counter() - start)
