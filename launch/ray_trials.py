"""Train jobs as Ray Tune trials: one trial per population shard and one for the explorer, of one
run (``train_with_ray``) or of every run of a sweep (``train_trials``, launch/sweep.py), as one Tune
experiment whose requests launch/placement.py makes over all of its jobs.

Why Tune: it places each trial where its resource request fits (fractional GPUs included),
restarts a trial that crashed or whose node died (``FailureConfig``), and runs on whatever cluster
``ray.init`` joined. What Tune does not own is the run directory: every trial reads and writes
``runs/<name>/<agent>/`` exactly as in-process training does, so a restarted trial resumes from its
agent's newest checkpoint, ``tensorboard --logdir runs/<name>`` shows every agent, and eval.py does
not know Ray was involved. On a multi-node cluster ``runs_dir`` must therefore be on storage that
every node sees (NFS or similar), and the project installed on every node.

Tune's own bookkeeping (experiment state, per-trial logs, checkpoint pointers) goes to its storage
path: ``runs/<name>/ray/`` for a run (core/run_layout.py), the sweep's for a sweep; on a cluster,
storage every node sees. A re-run after the driver died plans only the jobs that have not reached
their budget; those resume from their checkpoints. Every trial reports, with its metrics, the Ray
node and GPU ids it runs on (``placement_metrics``).
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from ray.tune import Callback

from core.config import Config, ConfigError
from core.runtime import Runtime
from launch.jobs import USER_ERRORS, Job, pending_jobs, report_metrics, train_job
from launch.placement import GIB, SHARE_QUANTUM, Request, job_kind, place, torch_threads
from launch.trial_table import RunTable

log = logging.getLogger("expgen")
FATAL = "fatal_error"  # the result key of a trial that ended on an error no retry can fix
PROBE_TIMEOUT_S = 120.0  # for a GPU node to say how much memory its GPUs have (a worker starts there)


def init_ray(address: str) -> None:
    """Join the Ray cluster at ``address`` ("auto" or host:port). Empty: Ray's own lookup, which
    joins the cluster named by the ``RAY_ADDRESS`` environment variable, else one that ``ray start``
    runs on this machine, and only then starts Ray here, for this process alone."""
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


def gpu_memory_gib() -> float | None:
    """The memory of the smallest GPU of the cluster in GiB, asked of one GPU on each node that has
    some (a task with a sliver of a GPU: Ray's workers see their node's devices, the driver may see
    none); None when a node's workers see no CUDA device (GPUs declared to Ray but not real) or do
    not answer within ``PROBE_TIMEOUT_S`` (every GPU taken)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=0, num_gpus=SHARE_QUANTUM)
    def probe() -> float | None:
        return torch.cuda.get_device_properties(0).total_memory / GIB if torch.cuda.is_available() else None

    nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("GPU", 0) > 0]
    refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)).remote() for n in nodes]
    ready, waiting = ray.wait(refs, num_returns=len(refs), timeout=PROBE_TIMEOUT_S)
    for ref in waiting:
        ray.cancel(ref, force=True)
    sizes = ray.get(ready)
    if waiting or None in sizes or not sizes:
        log.warning("GPU memory unknown (%s): GPU shares are not checked against it",
                    "no answer from a GPU node" if waiting else "Ray's workers see no CUDA device")
        return None
    return min(sizes)


@dataclass(frozen=True)
class Trial:
    """One job of one run: a Tune trial. ``cfg.runs_dir`` is absolute (trials may run elsewhere)."""

    cfg: Config
    job: Job

    @property
    def key(self) -> str:
        """The trial's name in Tune (its ``job`` parameter): ``<run>/<job>``."""
        return f"{self.cfg.name}/{self.job.name}"


def trial_bundles(cfg: Config, job: Job, request: Request) -> list[dict[str, float]]:
    """The trial's own request, then one bundle per RLlib env runner and learner it will start, so
    that Tune reserves the workers of ``engine=rllib`` together with the trial (a placement group)."""
    bundles = [request.resources()]
    if cfg.engine == "rllib" and job.kind == "members":
        r = cfg.rllib
        bundles += [{"CPU": 1.0}] * r.num_env_runners
        bundles += [{"CPU": 1.0, "GPU": r.num_gpus_per_learner}] * r.num_learners
    return bundles


def check_fits(trial: Trial, request: dict[str, float], nodes: list[dict[str, float]]) -> None:
    """Fail before training when a trial could never be scheduled (Tune would wait forever)."""
    cfg, kind = trial.cfg, job_kind(trial.job)
    if not any(all(node.get(k, 0.0) >= v for k, v in request.items()) for node in nodes):
        largest = {k: max(node.get(k, 0.0) for node in nodes) for k in request}
        raise ConfigError(
            f"{trial.key} asks for {request['CPU']:g} CPUs and {request['GPU']:g} GPUs, but the largest Ray "
            f"node has {largest['CPU']:g} CPUs and {largest['GPU']:g} GPUs; lower resources.{kind}_cpus / "
            f"resources.{kind}_gpus or join a bigger cluster (--ray-address)"
        )
    if cfg.device.startswith("cuda") and request["GPU"] == 0:
        raise ConfigError(f"device={cfg.device} but {trial.key} gets no GPU from Ray: set "
                          f"resources.{kind}_gpus or device=auto")


def check_workers_fit(trial: Trial, bundles: list[dict[str, float]], nodes: list[dict[str, float]]) -> None:
    """``engine=rllib``: a trial's placement group (the trial plus one bundle per env runner and
    learner) must fit the cluster as a whole, or Tune waits for it forever."""
    cfg = trial.cfg
    for k in ("CPU", "GPU"):
        need, have = sum(b.get(k, 0.0) for b in bundles), sum(n.get(k, 0.0) for n in nodes)
        if need > have:
            raise ConfigError(
                f"{trial.key} with its {cfg.rllib.num_env_runners} RLlib env runner(s) and "
                f"{cfg.rllib.num_learners} learner(s) needs {need:g} {k}s, but the Ray cluster has "
                f"{have:g}; lower rllib.num_env_runners / rllib.num_learners or "
                f"resources.shard_cpus, or join a bigger cluster (--ray-address)"
            )


def plan_trials(trials: list[Trial], nodes: list[dict[str, float]],
                gpu_memory: float | None) -> dict[str, list[dict[str, float]]]:
    """Each trial's bundles (``trial_bundles`` of its ``launch.placement.place`` request) on a
    cluster of ``nodes`` (Ray's resources per alive node), checked to fit before any work; logs the
    placement. Raises ``ConfigError``."""
    gpus = sum(n.get("GPU", 0.0) for n in nodes)
    requests = place([(t.cfg, t.job) for t in trials], gpus, gpu_memory, max(n.get("CPU", 0.0) for n in nodes))
    bundles = {}
    for trial, request in zip(trials, requests):
        bundles[trial.key] = trial_bundles(trial.cfg, trial.job, request)
        check_fits(trial, bundles[trial.key][0], nodes)
        check_workers_fit(trial, bundles[trial.key], nodes)
    summary: dict[tuple[str, float, float, float], int] = {}
    for trial, r in zip(trials, requests):
        what = (trial.job.name if len({t.cfg.name for t in trials}) == 1 else job_kind(trial.job), r.cpus, r.gpus,
                round(r.memory_gib, 1))
        summary[what] = summary.get(what, 0) + 1
    log.info("placement on %d node(s), %g CPUs, %g GPUs%s: %s", len(nodes), sum(n.get("CPU", 0.0) for n in nodes),
             gpus, f" of {gpu_memory:.0f} GiB" if gpu_memory else "",
             "; ".join(f"{n} x {name}: {c:g} CPU, {g:g} GPU" + (f" (~{m:g} GiB)" if g else "")
                       for (name, c, g, m), n in summary.items()))
    return bundles


def trial_runtime(cfg: Config) -> Runtime:
    """Resolved once per trial: ``device=auto`` means CUDA only if Ray gave the trial a GPU."""
    import ray

    return Runtime.from_config(cfg, gpu_allowed=bool(ray.get_gpu_ids()))


def placement_metrics() -> dict[str, str]:
    """Where this trial runs, reported with every result: the Ray node's id and the ids of the GPUs
    Ray gave it (comma-separated; empty without)."""
    import ray

    return {"node": ray.get_runtime_context().get_node_id(),
            "gpu_ids": ",".join(str(i) for i in ray.get_gpu_ids())}


def run_trial(params: dict[str, Any], trials: dict[str, Trial], threads: dict[str, int]) -> None:
    """The Tune trainable: train one job, reporting every update and every checkpoint to Tune."""
    from ray import tune

    trial = trials[params["job"]]  # as planned: a restarted trial re-plans nothing (train_job re-checks)
    cfg, job = trial.cfg, trial.job
    torch.set_num_threads(threads[trial.key])  # the job's torch threads, not the whole node
    torch.manual_seed(cfg.seed)
    if tune.get_checkpoint() is not None:
        log.info("%s: restarted by Ray Tune; resuming from the newest checkpoint", trial.key)
    where = placement_metrics()

    def report(info: dict[str, Any]) -> None:
        metrics = {**report_metrics(info), **where}
        if not info["checkpoint"]:
            tune.report(metrics)
            return
        # The agents' checkpoints stay in the run directory; Tune's checkpoint records which step
        # is safe to resume from, so that Tune knows the trial has progress to restart from.
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, "expgen_checkpoint.json").write_text(json.dumps({"job": trial.key, "step": info["steps"]}))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))

    try:
        train_job(cfg, job, trial_runtime(cfg), progress=False, on_iteration=report)
    except USER_ERRORS as e:
        # A wrong setting, an unusable checkpoint or a non-finite loss (resuming replays the same
        # updates) fails the same way on every attempt: end the
        # trial normally with the error as its result, so Tune does not retry it as a crash.
        tune.report({FATAL: f"{type(e).__name__}: {e}", "done": True, **where})


class TrialTable(RunTable, Callback):
    """The live table of a Ray experiment (launch/trial_table.py), fed by Tune's trial states and
    reports: a row per job of one run, or (``of_runs``) a row per run of a sweep and one for all."""

    def __init__(self, cfg: Config, jobs: list[Job], refresh_s: float = 1.0) -> None:
        super().__init__({cfg.name: (cfg, jobs)}, f"{cfg.name}: {len(jobs)} trials on Ray", refresh_s)

    @classmethod
    def of_runs(cls, runs: dict[str, tuple[Config, list[Job]]], title: str) -> "TrialTable":
        table = cls.__new__(cls)
        RunTable.__init__(table, runs, title)
        return table

    def rows(self, trials: list) -> list[tuple[str, ...]]:
        return self.rows_of({t.config["job"]: (t.status, t.last_result or {}, t.num_failures) for t in trials})

    def setup(self, **info: Any) -> None:
        self.start()

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self.show(self.rows(trials))

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.stop(self.rows(trials))


def train_trials(trials: list[Trial], storage_path: Path, title: str,
                 progress: bool = True) -> dict[str, dict[str, Any]]:
    """Train ``trials`` (jobs of one or several runs) as one Tune experiment on the Ray cluster
    this process joined (``init_ray``), placed by ``launch.placement.place`` over all of them,
    explorers first. Tune's state goes to ``storage_path`` (shared by every node on a cluster).

    Returns, per trial key, its job's name, the wall time of its last attempt (``wall_s``), and the
    node and GPU ids of that attempt. Raises ``ConfigError`` (a request that cannot fit, or a job
    that ended on an error no retry can fix: every such one named), ``KeyboardInterrupt`` (Ctrl-C
    stopped the experiment) or ``RuntimeError`` (trials that failed more often than
    ``resources.max_failures``: their checkpoints are kept).
    """
    import ray
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    trials = sorted(trials, key=lambda t: not t.job.explorer)  # the longest jobs start first
    nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
    gpus = sum(n.get("GPU", 0.0) for n in nodes)
    bundles = plan_trials(trials, nodes, gpu_memory_gib() if gpus else None)
    by_key = {t.key: t for t in trials}
    threads = {t.key: torch_threads(t.cfg, t.job) for t in trials}
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, trials=by_key, threads=threads),
        # Ray rejects zero-valued resources in a bundle.
        lambda params: tune.PlacementGroupFactory(
            [{k: v for k, v in b.items() if v > 0} for b in bundles[params["job"]]]),
    )
    runs: dict[str, tuple[Config, list[Job]]] = {}
    for t in trials:
        runs.setdefault(t.cfg.name, (t.cfg, []))[1].append(t.job)
    callbacks = [JsonLoggerCallback(), CSVLoggerCallback()]
    if progress:
        callbacks.append(TrialTable.of_runs(runs, title))
    max_failures = max(t.cfg.resources.max_failures for t in trials)
    tuner = tune.Tuner(
        trainable,
        param_space={"job": tune.grid_search(list(by_key))},
        tune_config=tune.TuneConfig(max_concurrent_trials=len(trials), reuse_actors=False),
        run_config=tune.RunConfig(
            name=time.strftime("train_%Y%m%d-%H%M%S"),
            storage_path=str(storage_path),
            failure_config=tune.FailureConfig(max_failures=max_failures),
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
            f"trials failed more than resources.max_failures={max_failures} times: {names}. "
            f"Their checkpoints are kept; re-run the same command to resume. Logs: {storage_path}"
        )
    return {r.config["job"]: {"job": by_key[r.config["job"]].job.name, "wall_s": r.metrics.get("time_total_s", 0.0),
                              "node": r.metrics.get("node", ""), "gpu_ids": r.metrics.get("gpu_ids", "")}
            for r in results}


def train_with_ray(cfg: Config) -> list[dict[str, Any]]:
    """Train every unfinished job of the run as a Tune trial (Tune's state in ``runs/<name>/ray/``);
    returns each trained job's name and wall time (``train_trials``)."""
    cfg = replace(cfg, runs_dir=str(Path(cfg.runs_dir).resolve()))  # trials may run elsewhere
    jobs = pending_jobs(cfg)
    if not jobs:
        return []
    init_ray(cfg.ray_address)
    trained = train_trials([Trial(cfg, j) for j in jobs], cfg.layout.ray,
                           f"{cfg.name}: {len(jobs)} trials on Ray", cfg.logging.progress)
    return list(trained.values())
