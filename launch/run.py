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
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any, Iterator

import torch

from agents.registry import check_options
from core.checkpoint import checkpoint_steps, load_latest, remove_stale_temporaries
from core.config import Config, ConfigError, incompatible_changes, load_config, save_config, validate
from core.run_layout import RunLayout
from core.runtime import Runtime
from launch.jobs import job_agents, pending_jobs, plan, train_job
from launch.placement import torch_threads
from launch.side_by_side import train_side_by_side

log = logging.getLogger("expgen")


def load_training_config(path: str | Path, overrides: list[str] = ()) -> Config:
    """``load_config`` for train.py. A run's own ``config.yaml`` (the file inside a folder that
    train.py has trained, ``RunLayout.has_run``) trains that folder, wherever it now lives: the
    file's ``runs_dir`` and ``name`` say where the run was trained, not where it is, and following
    them would start a fresh run there and leave the moved one untouched. An override of ``name``
    or ``runs_dir`` names a run explicitly and wins (e.g. ``name=maze_s1 seed=1``: a new run with
    this run's settings). Raises ``ConfigError`` as ``load_config`` does."""
    cfg = load_config(path, overrides)
    here = Path(path).parent
    run = RunLayout(here if here.name == here.resolve().name else here.resolve())  # "." or "..": its real name
    named = {o.split("=", 1)[0].strip() for o in overrides} & {"name", "runs_dir"}
    if run.config.name != Path(path).name or not run.has_run() or named:
        return cfg
    if cfg.layout.root.resolve() != run.root.resolve():
        log.info("%s is the config of the run in %s: training that run (the file names %s, where it was "
                 "trained; set name=... for a new run with these settings)", path, run.root, cfg.layout.root)
        cfg.runs_dir, cfg.name = str(run.root.parent), run.name
        validate(cfg)
    return cfg


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
    trained, threads = [], torch.get_num_threads()
    try:
        for job in jobs:
            # The job's own torch threads, as under Ray or side by side: intra-op threads change the
            # order of float sums, so the same run would otherwise train other weights here.
            torch.set_num_threads(torch_threads(cfg, job))
            trained.append(train_job(cfg, job, runtime, cfg.logging.progress))
    finally:
        torch.set_num_threads(threads)  # what runs next in this process (a sweep's evaluation) keeps its own
    return trained


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


@contextlib.contextmanager
def open_run(cfg: Config) -> Iterator[None]:
    """A run made ready to train, held until the block ends: its lock (``run_lock``), its settings
    checked against its checkpoints (``check_unchanged``, raises ``ConfigError``), the temporaries
    of an interrupted checkpoint write removed, and its config saved when it has something to train.
    Used by ``train_run`` and by a sweep for each of its runs (launch/sweep.py)."""
    check_options(cfg)  # before the run directory exists
    with run_lock(cfg.layout):
        check_unchanged(cfg)
        for job in plan(cfg):
            for agent in job_agents(cfg, job):
                remove_stale_temporaries(agent.checkpoints)
        if pending_jobs(cfg, quiet=True):  # a re-run that trains nothing leaves config.yaml alone
            save_config(cfg, cfg.layout.config)
        yield


def train_run(cfg: Config, require_resume: bool = False) -> dict[str, Any]:
    """Train (or continue) every agent of the run; returns the run summary (``run_summary``)."""
    if require_resume and not has_checkpoints(cfg):
        raise FileNotFoundError(
            f"--resume: no checkpoints under {cfg.layout.root}; drop --resume to start a new run"
        )
    with open_run(cfg):
        start = time.perf_counter()
        if cfg.ray:
            from launch.ray_trials import train_with_ray  # Ray is imported only when it is used

            trained = train_with_ray(cfg)
        else:
            trained = train_without_ray(cfg)
        return run_summary(cfg, trained, time.perf_counter() - start)
