"""The plan of a run: which jobs train which agents, and how one job is built and trained.

A job is a population shard of ``population.size`` reward agents (0 = all together; the sb3 and
rllib engines train one member per job) or the explorer. Agents of a shard that would resume from
different steps (a member added beside finished ones, ``population.size`` changed after a partly
finished run, one member's newest checkpoint unreadable) are split into one job per step, so each
agent resumes from its own newest checkpoint and a finished agent is never trained or touched
again. The launchers (in this process or side by side in child processes, launch/run.py and
launch/side_by_side.py; Ray Tune, launch/ray_trials.py) plan with these functions and train a job
with ``train_job``.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

from core.checkpoint import CheckpointError, newest_readable_step
from core.config import Config, ConfigError
from core.run_layout import AgentDir, members_label
from core.runtime import Runtime
from launch.progress import ProgressBar
from training import checkpointing
from training.learner import Learner, NonFiniteError
from training.loop import train

log = logging.getLogger("expgen")
# Errors worded for the user that fail the same way on every attempt: train.py prints them as
# "error: ..." (exit code 2), and a job trained in a child process passes them on as they are.
USER_ERRORS = (ConfigError, CheckpointError, FileNotFoundError, NonFiniteError)


@dataclass(frozen=True)
class Job:
    """One unit of training: reward agents ``members`` trained together, or the explorer."""

    kind: str  # "members" | "explorer"
    members: tuple[int, ...] = ()

    @property
    def explorer(self) -> bool:
        return self.kind == "explorer"

    @property
    def name(self) -> str:
        if self.explorer:
            return "explorer"
        return f"member_{self.members[0]}" if len(self.members) == 1 else f"members_{members_label(self.members)}"


def shards(cfg: Config) -> list[list[int]]:
    """Member indices grouped into populations of ``population.size`` (one each for sb3/rllib,
    whose PPO trains one network at a time)."""
    members = list(range(cfg.ensemble.size))
    size = 1 if cfg.engine != "native" else cfg.population.size or len(members)
    return [members[i : i + size] for i in range(0, len(members), size)]


def resume_step(agent: AgentDir) -> int:
    """The step an agent resumes from: that of its newest readable checkpoint (0: none)."""
    return newest_readable_step(agent.checkpoints) or 0


def split_by_progress(cfg: Config, members: list[int] | tuple[int, ...]) -> list[Job]:
    """Members as jobs of those that resume from the same step (one job when all agree)."""
    groups: dict[int, list[int]] = {}
    for m in members:
        groups.setdefault(resume_step(cfg.layout.member(m)), []).append(m)
    return sorted((Job("members", tuple(g)) for g in groups.values()), key=lambda j: j.members)


def plan(cfg: Config) -> list[Job]:
    jobs = [job for shard in shards(cfg) for job in split_by_progress(cfg, shard)]
    return jobs + ([Job("explorer")] if cfg.explorer.enabled else [])


def job_agents(cfg: Config, job: Job) -> list[AgentDir]:
    return [cfg.layout.explorer] if job.explorer else [cfg.layout.member(m) for m in job.members]


def job_finished(cfg: Config, job: Job) -> bool:
    """Every agent of the job has a readable checkpoint at (or past) its final step."""
    total = cfg.final_step(job.explorer)
    return all(resume_step(a) >= total for a in job_agents(cfg, job))


def pending_jobs(cfg: Config, quiet: bool = False) -> list[Job]:
    """The jobs still to train; finished ones are logged as skipped (unless ``quiet``)."""
    pending = []
    for job in plan(cfg):
        if job_finished(cfg, job):
            if not quiet:
                log.info("%s: already trained to its budget, skipped", job.name)
        else:
            pending.append(job)
    return pending


def build_learner(cfg: Config, job: Job, runtime: Runtime) -> Learner:
    """The engine's learner for a job (sb3 and rllib are imported only when asked for)."""
    if job.explorer:
        from training.explorer_learner import ExplorerLearner

        return ExplorerLearner(cfg, runtime)
    if cfg.engine == "sb3":
        from training.engines.sb3 import SB3Learner

        return SB3Learner(cfg, job.members[0], runtime)
    if cfg.engine == "rllib":
        from training.engines.rllib import RLlibLearner

        return RLlibLearner(cfg, job.members[0], runtime)
    from training.population_learner import PopulationLearner

    return PopulationLearner(cfg, list(job.members), runtime)


def report_metrics(info: dict[str, Any]) -> dict[str, Any]:
    """What a job reports after every iteration (``train``'s ``on_iteration`` info) to whoever
    displays or schedules it: steps, steps/s, return, mean held-out return per split, done."""
    return {"steps": info["steps"], "sps": info["sps"], "done": info["done"],
            "episodic_return": info["episodic_return"],
            **{f"{split}_return": sum(v) / len(v) for split, v in info["heldout"].items()}}


def train_job(cfg: Config, job: Job, runtime: Runtime, progress: bool = True,
              on_iteration: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Resume a job from its newest checkpoints if any, train it to its budget, close it.

    Members that no longer resume from one step (a job planned before a crash that fell between two
    agents' checkpoint writes, e.g. a trial restarted by Ray Tune) train as separate jobs, one after
    another, each from its own newest checkpoint; finished ones are left alone.
    """
    groups = [job] if job.explorer else split_by_progress(cfg, job.members)
    if len(groups) > 1:
        parts = [train_job(cfg, g, runtime, progress, on_iteration) for g in groups if not job_finished(cfg, g)]
        return {"agents": [a for p in parts for a in p["agents"]], "steps": max((p["steps"] for p in parts), default=0),
                "heldout": {}, "job": job.name, "wall_s": sum(p["wall_s"] for p in parts)}
    # What auto resolved to here (device, precision, TF32, captured acting): the config cannot say.
    print(f"{job.name}: training on {runtime.describe()}", flush=True)
    learner = build_learner(cfg, job, runtime)
    try:
        if checkpointing.restore(learner):
            log.info("%s: resuming at step %d", job.name, learner.global_step)
        bar = ProgressBar(learner.num_updates * learner.steps_per_update, job.name, learner.global_step, progress)
        start = time.perf_counter()
        try:
            summary = train(learner, cfg, runtime, bar, on_iteration)
        finally:
            bar.close()
        return {**summary, "job": job.name, "wall_s": time.perf_counter() - start}
    finally:
        learner.close()
