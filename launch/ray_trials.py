"""Train a run's jobs as Ray Tune trials: one trial per population shard and one for the explorer.

Why Tune: it places each trial where its resource request fits (fractional GPUs included),
restarts a trial that crashed or whose node died (``FailureConfig``), and runs on whatever cluster
``ray.init`` joined. What Tune does not own is the run directory: every trial reads and writes
``runs/<name>/<agent>/`` exactly as in-process training does, so a restarted trial resumes from its
agent's newest checkpoint, ``tensorboard --logdir runs/<name>`` shows every agent, and eval.py does
not know Ray was involved. On a multi-node cluster ``runs_dir`` must therefore be on storage that
every node sees (NFS or similar), and the project installed on every node.

Tune's own bookkeeping (experiment state, per-trial logs, checkpoint pointers) goes to
``runs/<name>/ray/`` (core/run_layout.py). A re-run after the driver died plans only the jobs that have not reached
their budget; those resume from their checkpoints.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from ray.tune import Callback

from core.config import Config, ConfigError
from core.runtime import Runtime
from launch.jobs import USER_ERRORS, Job, pending_jobs, report_metrics, train_job
from launch.trial_table import JobTable

log = logging.getLogger("expgen")
FATAL = "fatal_error"  # the result key of a trial that ended on an error no retry can fix


def init_ray(address: str) -> None:
    """Join ``address`` ("auto" or host:port), or start Ray on this machine when it is empty."""
    import ray

    if ray.is_initialized():
        return
    # Tune's default loggers would write a second set of TensorBoard files into the run directory
    # (its JSON and CSV loggers are added back in ``train_with_ray``).
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    # Tune snapshots its experiment state at every reported checkpoint: cheap here, so no warning.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Trials find the run directory by absolute path; Ray need not change their working directory.
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    ray.init(address=address or None, include_dashboard=False, configure_logging=False,
             log_to_driver=False)


def trial_resources(cfg: Config, job: Job, trials: int, cluster_gpus: float) -> dict[str, float]:
    """The CPUs and GPUs one job asks for; GPUs < 0 (auto) share the cluster's GPUs evenly."""
    r = cfg.resources
    cpus, gpus = (r.explorer_cpus, r.explorer_gpus) if job.kind == "explorer" else (r.shard_cpus, r.shard_gpus)
    if gpus < 0:
        gpus = min(1.0, cluster_gpus / trials) if cluster_gpus else 0.0
    if gpus > 1 and gpus != int(gpus):
        raise ConfigError(f"{job.name}: a trial asks for {gpus} GPUs; above 1 it must be a whole number")
    return {"CPU": cpus, "GPU": gpus}


def trial_bundles(cfg: Config, job: Job, trials: int, cluster_gpus: float) -> list[dict[str, float]]:
    """The trial's own request, then one bundle per RLlib env runner and learner it will start, so
    that Tune reserves the workers of ``engine=rllib`` together with the trial (a placement group)."""
    bundles = [trial_resources(cfg, job, trials, cluster_gpus)]
    if cfg.engine == "rllib" and job.kind == "members":
        r = cfg.rllib
        bundles += [{"CPU": 1.0}] * r.num_env_runners
        bundles += [{"CPU": 1.0, "GPU": r.num_gpus_per_learner}] * r.num_learners
    return bundles


def check_fits(cfg: Config, requests: dict[str, dict[str, float]], nodes: list[dict[str, float]]) -> None:
    """Fail before training when a trial could never be scheduled (Tune would wait forever)."""
    for name, req in requests.items():
        if not any(all(node.get(k, 0.0) >= v for k, v in req.items()) for node in nodes):
            largest = {k: max(node.get(k, 0.0) for node in nodes) for k in req}
            kind = "explorer" if name == "explorer" else "shard"
            raise ConfigError(
                f"{name} asks for {req['CPU']:g} CPUs and {req['GPU']:g} GPUs, but the largest Ray node "
                f"has {largest['CPU']:g} CPUs and {largest['GPU']:g} GPUs; lower resources.{kind}_cpus / "
                f"resources.{kind}_gpus or join a bigger cluster (--ray-address)"
            )
        if cfg.device.startswith("cuda") and req["GPU"] == 0:
            raise ConfigError(f"device={cfg.device} but {name} gets no GPU from Ray: set "
                              f"resources.{'explorer' if name == 'explorer' else 'shard'}_gpus or device=auto")


def check_workers_fit(cfg: Config, bundles: dict[str, list[dict[str, float]]], nodes: list[dict[str, float]]) -> None:
    """``engine=rllib``: a trial's placement group (the trial plus one bundle per env runner and
    learner) must fit the cluster as a whole, or Tune waits for it forever."""
    for name, group in bundles.items():
        for k in ("CPU", "GPU"):
            need, have = sum(b.get(k, 0.0) for b in group), sum(n.get(k, 0.0) for n in nodes)
            if need > have:
                raise ConfigError(
                    f"{name} with its {cfg.rllib.num_env_runners} RLlib env runner(s) and "
                    f"{cfg.rllib.num_learners} learner(s) needs {need:g} {k}s, but the Ray cluster has "
                    f"{have:g}; lower rllib.num_env_runners / rllib.num_learners or "
                    f"resources.shard_cpus, or join a bigger cluster (--ray-address)"
                )


def trial_runtime(cfg: Config) -> Runtime:
    """Resolved once per trial: ``device=auto`` means CUDA only if Ray gave the trial a GPU."""
    import ray

    return Runtime.from_config(cfg, gpu_allowed=bool(ray.get_gpu_ids()))


def run_trial(params: dict[str, Any], cfg: Config, jobs: dict[str, Job], cpus: dict[str, float]) -> None:
    """The Tune trainable: train one job, reporting every update and every checkpoint to Tune."""
    from ray import tune

    job = jobs[params["job"]]  # as planned: a restarted trial re-plans nothing (train_job re-checks)
    torch.set_num_threads(max(1, int(cpus[job.name])))  # the trial's CPU share, not the whole node
    torch.manual_seed(cfg.seed)
    if tune.get_checkpoint() is not None:
        log.info("%s: restarted by Ray Tune; resuming from the newest checkpoint", job.name)

    def report(info: dict[str, Any]) -> None:
        metrics = report_metrics(info)
        if not info["checkpoint"]:
            tune.report(metrics)
            return
        # The agents' checkpoints stay in the run directory; Tune's checkpoint records which step
        # is safe to resume from, so that Tune knows the trial has progress to restart from.
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, "expgen_checkpoint.json").write_text(json.dumps({"job": job.name, "step": info["steps"]}))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))

    try:
        train_job(cfg, job, trial_runtime(cfg), progress=False, on_iteration=report)
    except USER_ERRORS as e:
        # A wrong setting, an unusable checkpoint or a non-finite loss (resuming replays the same
        # updates) fails the same way on every attempt: end the
        # trial normally with the error as its result, so Tune does not retry it as a crash.
        tune.report({FATAL: f"{type(e).__name__}: {e}", "done": True})


class TrialTable(JobTable, Callback):
    """The live table of a Ray run (launch/trial_table.py), fed by Tune's trial states and reports."""

    def __init__(self, cfg: Config, jobs: list[Job], refresh_s: float = 1.0) -> None:
        super().__init__(cfg, jobs, f"{cfg.name}: {len(jobs)} trials on Ray", refresh_s)

    def rows(self, trials: list) -> list[tuple[str, ...]]:
        return [self.row(t.config["job"], t.status, t.last_result or {}, t.num_failures)
                for t in sorted(trials, key=lambda t: t.config["job"])]

    def setup(self, **info: Any) -> None:
        self.start()

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self.show(self.rows(trials))

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.stop(self.rows(trials))


def train_with_ray(cfg: Config) -> list[dict[str, Any]]:
    """Train every unfinished job of the run as a Tune trial; returns each trained job's wall time."""
    import ray
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    cfg = replace(cfg, runs_dir=str(Path(cfg.runs_dir).resolve()))  # trials may run elsewhere
    jobs = pending_jobs(cfg)
    if not jobs:
        return []
    init_ray(cfg.ray_address)
    cluster_gpus = ray.cluster_resources().get("GPU", 0.0)
    bundles = {j.name: trial_bundles(cfg, j, len(jobs), cluster_gpus) for j in jobs}
    nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
    check_fits(cfg, {name: b[0] for name, b in bundles.items()}, nodes)
    check_workers_fit(cfg, bundles, nodes)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, cfg=cfg, jobs={j.name: j for j in jobs},
                             cpus={k: b[0]["CPU"] for k, b in bundles.items()}),
        # Ray rejects zero-valued resources in a bundle.
        lambda params: tune.PlacementGroupFactory(
            [{k: v for k, v in b.items() if v > 0} for b in bundles[params["job"]]]),
    )
    callbacks = [JsonLoggerCallback(), CSVLoggerCallback()]
    callbacks += [TrialTable(cfg, jobs)] if cfg.logging.progress else []
    tuner = tune.Tuner(
        trainable,
        param_space={"job": tune.grid_search([j.name for j in jobs])},
        tune_config=tune.TuneConfig(max_concurrent_trials=len(jobs), reuse_actors=False),
        run_config=tune.RunConfig(
            name=time.strftime("train_%Y%m%d-%H%M%S"),
            storage_path=str(cfg.layout.ray),
            failure_config=tune.FailureConfig(max_failures=cfg.resources.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            callbacks=callbacks,
            verbose=0,
        ),
    )
    results = tuner.fit()
    fatal = [f"{r.config['job']}: {r.metrics[FATAL]}" for r in results if r.metrics and FATAL in r.metrics]
    if fatal:
        raise ConfigError("; ".join(fatal))
    failed = [r for r in results if r.error is not None]
    unfinished = [r for r in results if r.error is None and not (r.metrics or {}).get("done")]
    if unfinished and not failed:
        # Tune returns normally when Ctrl-C stops the experiment: the run is not complete.
        raise KeyboardInterrupt
    if failed:
        names = ", ".join(f"{r.config['job']} ({type(r.error).__name__}: {r.error})" for r in failed)
        raise RuntimeError(
            f"trials failed more than resources.max_failures={cfg.resources.max_failures} times: {names}. "
            f"Their checkpoints are kept; re-run the same command to resume. Logs: {cfg.layout.ray}"
        )
    return [{"job": r.config["job"], "wall_s": r.metrics.get("time_total_s", 0.0)} for r in results]
