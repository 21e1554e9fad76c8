"""How long a config's whole run takes on this machine: every job's steady-state speed, alone and
side by side, the projected wall time of the config's budgets, and where an iteration's time goes.

    python benchmarks/full_run.py --config configs/maze.yaml          # the paper's recipe (a GPU)
    python benchmarks/full_run.py --config configs/maze.yaml device=cpu network.kind=small \\
        ensemble.size=2 ppo.num_steps=64 --seconds 20                 # small sizes on a CPU

Each job the run plans (launch/jobs.py: the reward agents' population shards and the explorer) is
measured in a fresh process, first alone, then all jobs at once on the same device, as train.py
runs them side by side (``resources.side_by_side``, or Ray). Steady state: one warm-up iteration
(allocator, cuDNN autotuning), then whole iterations (rollout and PPO update) until ``--seconds``
have passed; checkpoints are not included. Every process uses the torch threads its job gets in a
run (``resources.shard_cpus``/``explorer_cpus``).

Held-out evaluation (training/heldout.py, the curves ``eval/<split>_return``) is measured apart:
each job, alone, plays one evaluation at the config's ``logging.eval_episodes`` x
``logging.eval_splits`` with its (barely trained) agents, and a run plays one at step 0, one every
``logging.eval_interval`` updates and one after the last update (``heldout_evaluations``). Early
agents play the longest episodes (an untrained maze agent mostly times out at 500 steps), so this
is the cost of an early evaluation: an upper bound for later ones. ``--no-heldout`` skips it.

The projection runs the jobs side by side at their measured together speeds and finishes the last
one at its alone speed; with held-out evaluation, each job also spends its evaluations' seconds,
spread evenly over its training. The breakdown times one more iteration of each job with the device
synchronised at every phase boundary (training/phases.py): env stepping (the time spent waiting
for procgen), inference, host-device transfers, the explorer's kNN reward, the PPO update, and
the rest (Python bookkeeping, episode statistics). Overrides (``key=value``) change the config.

**On N GPUs** (``--gpus N``): the wall time of one run and of a sweep (the config, each
``--sweep-config`` as another variant, the axes of comma-separated overrides and ``--seeds``
replicates, as sweep.py expands them) on a cluster of N GPUs, ``--gpus-per-node`` per node with
``--node-cpus`` CPUs each. Every job gets the request the launcher would make
(``launch.placement.place`` over all the sweep's jobs, ``--gpu-memory`` GiB per GPU), and an event
simulation places them as Ray would (first fit, explorers first, a waiting job starting as soon as
one that fits ends) and runs each at its alone speed, or, beside n - 1 other jobs on its GPU, at
``shared x 2 / n`` of it (``shared``: the speed beside one other job, measured here as together /
alone, or ``--shared``; beyond two jobs a GPU is assumed to give no more in all than with two).
``--sps [CONFIG:]members=S`` and ``--sps explorer=S`` give measured speeds (all agents' steps/s of
a job as the config plans it, alone on a GPU) instead of measuring here::

    python benchmarks/full_run.py --config configs/paper.yaml --sweep-config configs/maze_idaac.yaml \\
        env.game=maze,heist,jumper --seeds 3 --gpus 8 --node-cpus 16 --gpu-memory 139.8 \\
        --sps members=13786 --sps explorer=5225 --sps maze_idaac:members=4528
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from core.config import Config, load_config  # noqa: E402
from core.runtime import Runtime, resolve_device  # noqa: E402
from launch.jobs import Job, build_learner, plan  # noqa: E402
from launch.placement import place  # noqa: E402
from launch.progress import duration  # noqa: E402
from launch.sweep import expand  # noqa: E402
from training.heldout import evaluate_heldout  # noqa: E402
from training.native_learner import rollout_slices  # noqa: E402
from training.phases import PHASES  # noqa: E402


def job_threads(cfg: Config, job: Job) -> int:
    return max(1, int(cfg.resources.explorer_cpus if job.explorer else cfg.resources.shard_cpus))


def measure(cfg: Config, job: Job, seconds: float, start: Any = None, breakdown: bool = True,
            heldout: bool = False) -> dict[str, Any]:
    """Steady-state steps/s of ``job`` (all its agents' env steps per second of wall time), and
    the phase breakdown of one more iteration. ``start``: a barrier that every job measured at
    the same time waits at after its warm-up, so that their timed windows coincide. ``heldout``:
    then also time one held-out evaluation of the job's agents (``time_heldout``), under
    ``result["heldout"]``."""
    torch.set_num_threads(job_threads(cfg, job))
    runtime = Runtime.from_config(cfg)
    sync = torch.cuda.synchronize if runtime.device.type == "cuda" else (lambda: None)
    learner = build_learner(cfg, job, runtime)
    try:
        learner.iterate()  # warm-up
        if start is not None:
            start.wait()
        sync()
        begin, iterations = time.perf_counter(), 0
        while iterations == 0 or time.perf_counter() - begin < seconds:
            learner.iterate()
            iterations += 1
        sync()
        elapsed = time.perf_counter() - begin
        steps = iterations * learner.steps_per_update * len(learner.agents)
        result = {"job": job.name, "agents": len(learner.agents), "sps": steps / elapsed,
                  "iteration_s": elapsed / iterations, "iterations": iterations,
                  "slices": len(getattr(learner, "slices", [0])), "runtime": runtime.describe(),
                  **population_settings(cfg, job, learner)}
        if breakdown and hasattr(learner, "clock"):
            learner.clock.enabled = True
            begin = time.perf_counter()
            learner.iterate()
            total = time.perf_counter() - begin
            phases = {p: learner.clock.seconds.get(p, 0.0) for p in PHASES}
            result["breakdown"] = {**phases, "other": max(0.0, total - sum(phases.values())), "total": total}
        if heldout:
            result["heldout"] = time_heldout(cfg, learner, runtime)
        if runtime.device.type == "cuda":
            result["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        return result
    finally:
        learner.close()


def population_settings(cfg: Config, job: Job, learner: Any) -> dict[str, Any]:
    """How a members' job ran its population: ``population.compile``, the forward mode in force
    (``auto`` unresolved means the device's default: loop on a CPU) and, where
    ``population.forward_mode=auto`` measured both modes at the job's start (CUDA, several
    members), their seconds per forward and backward of a minibatch; {} for the explorer."""
    if job.explorer:
        return {}
    return {"forward_mode": learner.pop.forward_mode, "forward_mode_times": dict(learner.forward_mode_times),
            "compile": cfg.population.compile}


def time_heldout(cfg: Config, learner: Any, runtime: Runtime) -> dict[str, Any]:
    """Wall seconds of one held-out evaluation of the learner's agents, as training/loop.py runs it
    (``logging.eval_episodes`` per agent on each of ``logging.eval_splits``), the device
    synchronised before and after; also the agents' mean return (low: barely trained agents)."""
    sync = torch.cuda.synchronize if runtime.device.type == "cuda" else (lambda: None)
    pop, seeds = learner.acting_population()
    sync()
    begin = time.perf_counter()
    results = evaluate_heldout(cfg, pop, seeds, learner.update, runtime.device)
    sync()
    return {"seconds": time.perf_counter() - begin, "agents": len(seeds),
            "episodes": cfg.logging.eval_episodes, "splits": list(cfg.logging.eval_splits),
            "mean_return": {split: float(h.returns.mean()) for split, h in results.items()}}


def alone(cfg: Config, job: Job, seconds: float, heldout: bool = False) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")  # a fresh process: its own CUDA context and memory
    with ctx.Pool(1) as pool:
        return pool.apply(measure, (cfg, job, seconds, None, True, heldout))


def together(cfg: Config, jobs: list[Job], seconds: float, heldout: bool = False) -> list[dict[str, Any]]:
    """Every job at once, each in a fresh process, timed windows coinciding. ``heldout``: each then
    also times one held-out evaluation, the jobs' evaluations side by side."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Manager().Barrier(len(jobs))
    with ctx.Pool(len(jobs)) as pool:
        pending = [pool.apply_async(measure, (cfg, job, seconds, barrier, False, heldout)) for job in jobs]
        return [p.get() for p in pending]


def job_budget(cfg: Config, job: Job) -> int:
    """Env steps of all the job's agents over the config's whole budget."""
    return cfg.final_step(job.explorer) * (1 if job.explorer else len(job.members))


def heldout_evaluations(cfg: Config, job: Job) -> int:
    """Held-out evaluations a run of ``job`` plays over the config's whole budget (training/loop.py):
    one at step 0, one every ``logging.eval_interval`` updates and one after the last update if
    that is not already one of them; 0 when ``logging.eval_interval`` is 0."""
    interval = cfg.logging.eval_interval
    if not interval:
        return 0
    updates = cfg.num_updates(job.explorer)
    return 1 + updates // interval + (1 if updates % interval else 0)


def heldout_overlapped(cfg: Config, job: Job, captured: bool) -> int:
    """Of the job's held-out evaluations (``heldout_evaluations``), how many training runs beside
    (``logging.eval_overlap``), as training/loop.py schedules them: each in the background after
    its update (one due with a checkpoint starts after the checkpoint is written), except the last
    update's, which the final checkpoint waits for. The update-0 evaluation comes before training;
    with ``captured`` acting (``Runtime.cudagraphs``) it plays inline, before the learner captures
    its graphs."""
    log = cfg.logging
    if not (log.eval_interval and log.eval_overlap):
        return 0
    updates = cfg.num_updates(job.explorer)
    evaluated = sorted({0, updates, *range(log.eval_interval, updates + 1, log.eval_interval)})
    return sum(1 for u in evaluated if u < updates and (u or not captured))


def project(budget: dict[str, int], alone_sps: dict[str, float], together_sps: dict[str, float],
            heldout_s: dict[str, float] | None = None) -> float:
    """Wall seconds to train every job to its budget, side by side: each at its together speed
    until all but one are done, the last one at its alone speed.

    ``heldout_s``: seconds of held-out evaluation each job also spends over its run (evaluations x
    the cost of one), spread evenly over its training: a job that is a fraction f through its work
    has f of them still to play, alone or side by side alike.
    """
    extra = heldout_s or {}
    # Each job's duration at its together and at its alone speed; ``left``: its fraction still to do.
    span = {n: budget[n] / together_sps[n] + extra.get(n, 0.0) for n in budget}
    solo = {n: budget[n] / alone_sps[n] + extra.get(n, 0.0) for n in budget}
    left = {n: 1.0 for n in budget}
    clock = 0.0
    while len(left) > 1:
        name = min(left, key=lambda n: left[n] * span[n])
        dt = left[name] * span[name]
        clock += dt
        left = {n: f - dt / span[n] for n, f in left.items() if n != name}
    (name, fraction), = left.items()
    return clock + fraction * solo[name]


def heldout_costs(cfg: Config, jobs: list[Job], seconds_each: dict[str, float]) -> dict[str, dict[str, Any]]:
    """Per job: evaluations over its budget (``heldout_evaluations``), the measured seconds of one,
    and their product, the seconds ``project`` adds to the job (``heldout_s``)."""
    out = {}
    for job in jobs:
        count = heldout_evaluations(cfg, job)
        out[job.name] = {"evaluations": count, "seconds_each": seconds_each[job.name],
                         "total_s": count * seconds_each[job.name]}
    return out


def machine(cfg: Config) -> str:
    device = resolve_device(cfg.device)
    cpu = subprocess.run(["sh", "-c", "lscpu | sed -n 's/^Model name: *//p' | head -1"],
                         capture_output=True, text=True).stdout.strip() or platform.processor()
    bf16 = subprocess.run(["sh", "-c", "lscpu | grep -o avx512_bf16 | head -1"], capture_output=True,
                          text=True).stdout.strip()
    gpu = f"{torch.cuda.get_device_name(device)}, " if device.type == "cuda" else ""
    return f"{gpu}{cpu} ({'AVX512-BF16' if bf16 else 'no AVX512-BF16'}), {multiprocessing.cpu_count()} cores"


# ---- projection onto N GPUs ---------------------------------------------------------------------

SHARED = {"members": 0.88, "explorer": 0.78}  # one H200, population of 10 beside the explorer (README)


@dataclass
class SimJob:
    """One job of the projection: its run, kind (members | explorer), work (agent-steps), speed
    alone (agent-steps/s), speed beside one other job (a fraction of alone) and its request."""

    run: str
    name: str
    kind: str
    work: float
    sps: float
    shared: float
    gpus: float
    cpus: float


def simulate(jobs: list[SimJob], nodes: int, gpus_per_node: int, node_cpus: float) -> dict[str, float]:
    """Each job's finish time in seconds (keyed ``run/name``) when ``jobs``, in order, are placed
    first-fit on ``nodes`` nodes of ``gpus_per_node`` GPUs and ``node_cpus`` CPUs, a waiting job
    starting as soon as one that fits ends; a job on a GPU with n jobs runs at ``sps`` alone, else at
    ``sps x shared x 2 / n``. Raises ValueError when some job fits no node at all."""
    free_gpu = [[1.0] * gpus_per_node for _ in range(nodes)]
    free_cpu = [node_cpus] * nodes
    left = {f"{j.run}/{j.name}": j.work for j in jobs}
    by_key = {f"{j.run}/{j.name}": j for j in jobs}
    where: dict[str, tuple[int, int]] = {}
    pending, finish, clock = list(by_key), {}, 0.0

    def start() -> None:
        for key in list(pending):
            j = by_key[key]
            for n in range(nodes):
                g = next((g for g in range(gpus_per_node) if free_gpu[n][g] >= j.gpus - 1e-9), None) if j.gpus else 0
                if g is not None and free_cpu[n] >= j.cpus - 1e-9:
                    where[key] = (n, g)
                    free_cpu[n] -= j.cpus
                    if j.gpus:
                        free_gpu[n][g] -= j.gpus
                    pending.remove(key)
                    break

    start()
    while where:
        sharing = {}
        for key, place_ in where.items():
            sharing[place_] = sharing.get(place_, 0) + (1 if by_key[key].gpus else 0)
        rate = {}
        for key, place_ in where.items():
            j, n = by_key[key], sharing[place_]
            rate[key] = j.sps if n <= 1 else j.sps * j.shared * 2 / n
        dt = min(left[k] / rate[k] for k in where)
        clock += dt
        for key in list(where):
            left[key] -= rate[key] * dt
            if left[key] <= 1e-6 * by_key[key].work:
                n, g = where.pop(key)
                free_cpu[n] += by_key[key].cpus
                free_gpu[n][g] += by_key[key].gpus
                finish[key] = clock
        start()
    if pending:
        raise ValueError(f"{pending[0]} fits no node of {node_cpus:g} CPUs and {gpus_per_node} GPU(s)")
    return finish


def parse_figures(entries: list[str]) -> dict[tuple[str, str], float]:
    """``--sps`` entries: ``[CONFIG:]members=S`` or ``explorer=S`` -> {(config stem or "", kind): S}."""
    out = {}
    for entry in entries:
        key, _, value = entry.partition("=")
        stem, _, kind = key.rpartition(":")
        if kind not in ("members", "explorer") or not value:
            raise SystemExit(f"error: --sps {entry!r}: expected [CONFIG:]members=S or [CONFIG:]explorer=S")
        out[(stem, kind)] = float(value)
    return out


def project_on_gpus(args: argparse.Namespace, measured: dict[tuple[str, str], float],
                    shared: dict[str, float]) -> dict[str, Any]:
    """The wall time of each run alone and of the whole sweep on ``args.gpus`` GPUs (module
    docstring); printed, and returned for ``--json``."""
    sweep = expand([args.config, *args.sweep_config], [*args.overrides, "logging.progress=false"], args.seeds)
    if args.gpu_memory is None and torch.cuda.is_available():  # here, after the measurements' processes
        args.gpu_memory = torch.cuda.get_device_properties(0).total_memory / 2**30
    figures = {**measured, **parse_figures(args.sps)}
    nodes = -(-args.gpus // args.gpus_per_node)

    def sim_jobs(runs: list) -> list[SimJob]:
        """The runs' jobs with the requests the launcher makes for them together, explorers first."""
        jobs = [(r, j) for r in runs for j in plan(r.cfg)]
        requests = place([(r.cfg, j) for r, j in jobs], args.gpus, args.gpu_memory, args.node_cpus)
        out = []
        for (run, job), req in zip(jobs, requests):
            stem, kind = run.variant.split(" ")[0], "explorer" if job.explorer else "members"
            sps = figures.get((stem, kind), figures.get(("", kind)))
            if sps is None:
                raise SystemExit(f"error: no steps/s for {stem}'s {kind} job: measure it (--config {stem}), "
                                 f"or give --sps {stem}:{kind}=S")
            out.append(SimJob(run.cfg.name, job.name, kind, float(job_budget(run.cfg, job)), sps, shared[kind],
                              req.gpus, req.cpus))
        return sorted(out, key=lambda j: j.kind != "explorer")

    every = sim_jobs(sweep.runs)
    requests: dict[tuple[str, str, float, float], int] = {}
    for j in every:
        what = (j.run, j.name) if len(sweep.runs) == 1 else (j.kind,)
        key = (" ".join(what), j.cpus, j.gpus)
        requests[key] = requests.get(key, 0) + 1
    print(f"\nprojection on {args.gpus} GPU(s): {nodes} node(s) x {args.gpus_per_node} GPU(s), "
          f"{args.node_cpus:g} CPUs each" + (f", GPUs of {args.gpu_memory:g} GiB" if args.gpu_memory else ""))
    print("requests (launch/placement.py): " + "; ".join(f"{n} x {what}: {c:g} CPUs, {g:g} GPU"
                                                         for (what, c, g), n in requests.items()))
    print("speeds alone: " + ", ".join(f"{stem or 'every config'} {kind} {v:,.0f} steps/s"
                                       for (stem, kind), v in figures.items())
          + f"; beside one other job on a GPU: {', '.join(f'{k} {v:.2f}x' for k, v in shared.items())}")
    runs_alone = {r.cfg.name: max(simulate(sim_jobs([r]), nodes, args.gpus_per_node, args.node_cpus).values())
                  for r in sweep.runs}
    finish = simulate(every, nodes, args.gpus_per_node, args.node_cpus)
    wall, serial = max(finish.values()), sum(runs_alone.values())
    for variant, runs in sweep.variants().items():
        longest = max(runs_alone[r.cfg.name] for r in runs)
        print(f"one run of {variant} alone on the {args.gpus} GPU(s): {duration(longest)} ({longest / 3600:.1f} h)")
    print(f"the sweep, {len(sweep.runs)} runs ({len(every)} jobs) as one experiment: {duration(wall)} "
          f"({wall / 3600:.1f} h); one run after another, each alone on the {args.gpus} GPU(s): "
          f"{duration(serial)} ({serial / 3600:.1f} h)")
    return {"gpus": args.gpus, "runs_alone_s": runs_alone, "sweep_s": wall, "serial_s": serial,
            "jobs": {f"{j.run}/{j.name}": {"gpus": j.gpus, "cpus": j.cpus, "finish_s": finish[f"{j.run}/{j.name}"]}
                     for j in every}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--seconds", type=float, default=60.0, help="timed window per measurement")
    parser.add_argument("--json", help="also write the measurements to this file")
    parser.add_argument("--no-heldout", action="store_true",
                        help="leave held-out evaluation out (not measured, not projected)")
    parser.add_argument("--gpus", type=int, default=0, help="also project a run and a sweep onto this many GPUs")
    parser.add_argument("--gpus-per-node", type=int, default=1, help="GPUs per node of that cluster")
    parser.add_argument("--node-cpus", type=float, default=float(multiprocessing.cpu_count()),
                        help="CPUs per node of that cluster (default: this machine's)")
    parser.add_argument("--gpu-memory", type=float,
                        help="GiB per GPU of that cluster (default: this machine's GPU's; none: not checked)")
    parser.add_argument("--sweep-config", action="append", default=[], help="another variant of the sweep")
    parser.add_argument("--seeds", type=int, default=0, help="replicates of every point of the sweep (sweep.py)")
    parser.add_argument("--sps", action="append", default=[],
                        help="[CONFIG:]members=S or explorer=S: a job's steps/s alone, measured elsewhere "
                             "(with --gpus: nothing is measured here when given)")
    parser.add_argument("--shared", default="",
                        help="members=F,explorer=F: a job's speed beside one other on its GPU, as a fraction "
                             f"of alone (default: measured here, or {', '.join(f'{k} {v}' for k, v in SHARED.items())} "
                             "with --sps: one H200)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args()
    shared = {**SHARED, **{k: float(v) for k, _, v in (e.partition("=") for e in args.shared.split(",") if e)}}
    if args.gpus and args.sps:
        projected = project_on_gpus(args, {}, shared)
        if args.json:
            Path(args.json).write_text(json.dumps({"projection": projected}, indent=2))
        return
    # The config's logging.eval_* settings stay: they say how often and how much a run evaluates.
    cfg = load_config(args.config, [*args.overrides, "logging.progress=false"], name="full_run_benchmark")
    heldout = not args.no_heldout and cfg.logging.eval_interval > 0
    jobs = plan(cfg)
    runtime = Runtime.from_config(cfg)
    print(f"machine: {machine(cfg)}; torch {torch.__version__}; {runtime.describe()}")
    print(f"config: {args.config} {' '.join(args.overrides)}: {cfg.env.game}, {cfg.network.kind}, "
          f"{cfg.env.num_envs} envs x {cfg.ppo.num_steps} steps, env.pipeline={cfg.env.pipeline} "
          f"({rollout_slices(cfg.env)} slice(s)); jobs: {', '.join(j.name for j in jobs)}",
          flush=True)
    # Identical shards measure alike: one of each size alone; all of them together.
    shapes = {(j.kind, len(j.members)): j for j in jobs}
    solo = {}
    for job in shapes.values():
        solo[job.name] = alone(cfg, job, args.seconds, heldout)
        r = solo[job.name]
        print(f"alone     {job.name:<14} {r['sps']:>9,.0f} steps/s ({r['agents']} agent(s), "
              f"{r['iteration_s']:.2f} s per iteration, {r['iterations']} timed)"
              + (f"; one held-out evaluation {r['heldout']['seconds']:.1f} s" if heldout else ""), flush=True)
    alone_sps = {j.name: solo[shapes[(j.kind, len(j.members))].name]["sps"] for j in jobs}
    both = together(cfg, jobs, args.seconds) if len(jobs) > 1 else [solo[jobs[0].name]]
    together_sps = {r["job"]: r["sps"] for r in both}
    if len(jobs) > 1:
        for r in both:
            print(f"together  {r['job']:<14} {r['sps']:>9,.0f} steps/s "
                  f"({r['sps'] / alone_sps[r['job']]:.2f}x alone)", flush=True)
    budget = {j.name: job_budget(cfg, j) for j in jobs}
    wall = project(budget, alone_sps, together_sps)
    one_by_one = sum(budget[n] / alone_sps[n] for n in budget)
    print("budget: " + ", ".join(f"{n} {b / 1e6:,.1f}M steps" for n, b in budget.items()))
    print(f"projected wall time: {duration(wall)} side by side ({wall / 3600:.2f} h); "
          f"{duration(one_by_one)} one job after another (training only)")
    costs: dict[str, dict[str, Any]] = {}
    if heldout:
        each = {j.name: solo[shapes[(j.kind, len(j.members))].name]["heldout"] for j in jobs}
        costs = heldout_costs(cfg, jobs, {n: h["seconds"] for n, h in each.items()})
        log = cfg.logging
        print(f"held-out evaluation (logging.eval_interval={log.eval_interval} updates, {log.eval_episodes} "
              f"episodes per agent on {', '.join(log.eval_splits)}; one measured per job, alone):")
        for name, c in costs.items():
            print(f"  {name:<14} {c['evaluations']:>5} x {c['seconds_each']:.1f} s = {duration(c['total_s'])}")
        with_heldout = project(budget, alone_sps, together_sps, {n: c["total_s"] for n, c in costs.items()})
        one_by_one_heldout = one_by_one + sum(c["total_s"] for c in costs.values())
        print(f"projected wall time with held-out evaluation: {duration(with_heldout)} side by side "
              f"({with_heldout / 3600:.2f} h, +{100 * (with_heldout / wall - 1):.0f}%); "
              f"{duration(one_by_one_heldout)} one job after another")
    print("\nbreakdown of one iteration (device synchronised at each phase), seconds and share:")
    print(f"{'job':<14}" + "".join(f"{p:>17}" for p in (*PHASES, "other", "total")))
    for name, r in solo.items():
        b = r.get("breakdown")
        if b:
            print(f"{name:<14}" + "".join(f"{b[p]:>9.3f} ({100 * b[p] / b['total']:>3.0f}%)"
                                          for p in (*PHASES, "other")) + f"{b['total']:>17.3f}")
    projected = None
    if args.gpus:
        stem = Path(args.config).stem
        measured = {(stem, "explorer" if j.explorer else "members"): alone_sps[j.name] for j in reversed(jobs)}
        if len(jobs) > 1 and not args.shared:
            shared = {"explorer" if j.explorer else "members": together_sps[j.name] / alone_sps[j.name] for j in jobs}
        projected = project_on_gpus(args, measured, shared)
    if args.json:
        extra = {"heldout": costs, "projected_wall_with_heldout_s": with_heldout,
                 "one_by_one_wall_with_heldout_s": one_by_one_heldout} if heldout else {"heldout": None}
        Path(args.json).write_text(json.dumps({"machine": machine(cfg), "config": args.config,
                                               "overrides": args.overrides, "alone": solo,
                                               "together": both, "projected_wall_s": wall,
                                               "one_by_one_wall_s": one_by_one, "projection": projected,
                                               **extra}, indent=2))


if __name__ == "__main__":
    main()
