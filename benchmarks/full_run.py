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
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from core.config import Config, load_config  # noqa: E402
from core.runtime import Runtime, resolve_device  # noqa: E402
from launch.jobs import Job, build_learner, plan  # noqa: E402
from launch.progress import duration  # noqa: E402
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
                  "slices": len(getattr(learner, "slices", [0])), "runtime": runtime.describe()}
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--seconds", type=float, default=60.0, help="timed window per measurement")
    parser.add_argument("--json", help="also write the measurements to this file")
    parser.add_argument("--no-heldout", action="store_true",
                        help="leave held-out evaluation out (not measured, not projected)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
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
    if args.json:
        extra = {"heldout": costs, "projected_wall_with_heldout_s": with_heldout,
                 "one_by_one_wall_with_heldout_s": one_by_one_heldout} if heldout else {"heldout": None}
        Path(args.json).write_text(json.dumps({"machine": machine(cfg), "config": args.config,
                                               "overrides": args.overrides, "alone": solo,
                                               "together": both, "projected_wall_s": wall,
                                               "one_by_one_wall_s": one_by_one, **extra}, indent=2))


if __name__ == "__main__":
    main()
