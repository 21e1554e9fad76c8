"""Train everything a run's config asks for, into its run directory (core/run_layout.py).

With ``ray: true`` every job of the plan (launch/jobs.py) is a Ray Tune trial
(launch/ray_trials.py). With ``ray: false`` the pending jobs train side by side, one child process
each, on this machine (launch/side_by_side.py; ``resources.side_by_side``), or, when only one job is
pending or ``resources.side_by_side: false``, here, one after another. Either way a job resumes from
its newest checkpoints and a finished job is skipped.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from typing import Any, Iterator

import torch

from core.checkpoint import checkpoint_steps, load_latest, remove_stale_temporaries
from core.config import Config, ConfigError, incompatible_changes, load_config, save_config
from core.run_layout import RunLayout
from core.runtime import Runtime
from launch.jobs import job_agents, pending_jobs, plan, train_job
from launch.side_by_side import train_side_by_side


def has_checkpoints(cfg: Config) -> bool:
    return any(checkpoint_steps(a.checkpoints) for job in plan(cfg) for a in job_agents(cfg, job))


def train_without_ray(cfg: Config) -> list[dict[str, Any]]:
    """``ray: false``: the unfinished jobs side by side in child processes, or one after another in
    this process (one job pending, or ``resources.side_by_side: false``)."""
    jobs = pending_jobs(cfg)
    if cfg.resources.side_by_side and len(jobs) > 1:
        return train_side_by_side(cfg, jobs)
    runtime = Runtime.from_config(cfg)
    torch.manual_seed(cfg.seed)
    return [train_job(cfg, job, runtime, cfg.logging.progress) for job in jobs]


def run_summary(cfg: Config, trained: list[dict[str, Any]], wall_s: float) -> dict[str, Any]:
    """Per agent, from its newest checkpoint: steps and the last held-out returns; per job, the
    wall time this invocation spent on it (0 for jobs that were already finished)."""
    job_wall = {s["job"]: s["wall_s"] for s in trained}
    agents = []
    for job in plan(cfg):
        for agent in job_agents(cfg, job):
            ckpt = load_latest(agent.checkpoints) or {}
            heldout = {f"{split}_return": value for split, value in ckpt.get("heldout", {}).items()}
            agents.append({"agent": agent.name, "job": job.name, "steps": ckpt.get("step", 0),
                           "job_wall_s": job_wall.get(job.name, 0.0), **heldout})
    summary = {"run_dir": str(cfg.layout.root), "wall_s": wall_s, "ray": cfg.ray, "agents": agents}
    cfg.layout.summary.write_text(json.dumps(summary, indent=2))
    return summary


@contextlib.contextmanager
def run_lock(layout: RunLayout) -> Iterator[None]:
    """One train.py per run directory: an exclusive ``flock`` on ``<run>/.lock``. The kernel
    releases it when the holder exits, crashed or not, so a stale lock file never blocks."""
    try:
        layout.root.mkdir(parents=True, exist_ok=True)
        f = open(layout.lock, "a+")
    except OSError as e:
        raise ConfigError(f"cannot write the run directory {layout.root}: {e.strerror or e}; check "
                          "runs_dir and its permissions") from None
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise ConfigError(f"{layout.root} is being trained by {holder}; wait for it to finish, "
                              "or stop it, before training this run again") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        f.flush()
        yield
    finally:
        f.close()  # closing releases the lock


def check_unchanged(cfg: Config) -> None:
    """A run that has checkpoints continues only with the settings it was trained with."""
    if not (cfg.layout.config.is_file() and has_checkpoints(cfg)):
        return
    changed = incompatible_changes(load_config(cfg.layout.config, name=cfg.name), cfg)
    if changed:
        raise ConfigError(
            f"{cfg.layout.root} was trained with other settings ({'; '.join(changed)}); continuing "
            "would mix two experiments. Use a new run name (name=...) or the original settings; "
            "budgets (ppo.total_steps, explorer.total_steps), logging, eval and resources may change."
        )


def train_run(cfg: Config, require_resume: bool = False) -> dict[str, Any]:
    """Train (or continue) every agent of the run; returns the run summary (``run_summary``)."""
    if require_resume and not has_checkpoints(cfg):
        raise FileNotFoundError(
            f"--resume: no checkpoints under {cfg.layout.root}; drop --resume to start a new run"
        )
    with run_lock(cfg.layout):
        check_unchanged(cfg)
        for job in plan(cfg):
            for agent in job_agents(cfg, job):
                remove_stale_temporaries(agent.checkpoints)
        if pending_jobs(cfg, quiet=True):  # a re-run that trains nothing leaves config.yaml alone
            save_config(cfg, cfg.layout.config)
        start = time.perf_counter()
        if cfg.ray:
            from launch.ray_trials import train_with_ray  # Ray is imported only when it is used

            trained = train_with_ray(cfg)
        else:
            trained = train_without_ray(cfg)
        return run_summary(cfg, trained, time.perf_counter() - start)
