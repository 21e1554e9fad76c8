"""How long a config's whole run takes on this machine: every job's steady-state speed, alone and
side by side, the projected wall time of the config's budgets, and where an iteration's time goes.

    python benchmarks/full_run.py --config configs/maze.yaml          # the paper's recipe (a GPU)
    python benchmarks/full_run.py --config configs/maze.yaml device=cpu network.kind=small \\
        ensemble.size=2 ppo.num_steps=64 --seconds 20                 # small sizes on a CPU

Each job the run plans (launch/jobs.py: the reward agents' population shards and the explorer) is
measured in a fresh process, first alone, then all jobs at once on the same device, as train.py
runs them side by side (``resources.side_by_side``, or Ray). Steady state: one warm-up iteration
(allocator, cuDNN autotuning), then whole iterations (rollout and PPO update) until ``--seconds``
have passed; held-out evaluation and checkpoints are not included. Every process uses the torch
threads its job gets in a run (``resources.shard_cpus``/``explorer_cpus``).

The projection runs the jobs side by side at their measured together speeds and finishes the last
one at its alone speed. The breakdown times one more iteration of each job with the device
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
from training.native_learner import rollout_slices  # noqa: E402
from training.phases import PHASES  # noqa: E402


def job_threads(cfg: Config, job: Job) -> int:
    return max(1, int(cfg.resources.explorer_cpus if job.explorer else cfg.resources.shard_cpus))


def measure(cfg: Config, job: Job, seconds: float, start: Any = None, breakdown: bool = True) -> dict[str, Any]:
    """Steady-state steps/s of ``job`` (all its agents' env steps per second of wall time), and
    the phase breakdown of one more iteration. ``start``: a barrier that every job measured at
    the same time waits at after its warm-up, so that their timed windows coincide."""
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
        if runtime.device.type == "cuda":
            result["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        return result
    finally:
        learner.close()


def alone(cfg: Config, job: Job, seconds: float) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")  # a fresh process: its own CUDA context and memory
    with ctx.Pool(1) as pool:
        return pool.apply(measure, (cfg, job, seconds))


def together(cfg: Config, jobs: list[Job], seconds: float) -> list[dict[str, Any]]:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Manager().Barrier(len(jobs))
    with ctx.Pool(len(jobs)) as pool:
        pending = [pool.apply_async(measure, (cfg, job, seconds, barrier, False)) for job in jobs]
        return [p.get() for p in pending]


def job_budget(cfg: Config, job: Job) -> int:
    """Env steps of all the job's agents over the config's whole budget."""
    return cfg.final_step(job.explorer) * (1 if job.explorer else len(job.members))


def project(budget: dict[str, int], alone_sps: dict[str, float], together_sps: dict[str, float]) -> float:
    """Wall seconds to train every job to its budget, side by side: each at its together speed
    until all but one are done, the last one at its alone speed."""
    left = {name: float(steps) for name, steps in budget.items()}
    clock = 0.0
    while len(left) > 1:
        name = min(left, key=lambda n: left[n] / together_sps[n])
        dt = left[name] / together_sps[name]
        clock += dt
        left = {n: w - dt * together_sps[n] for n, w in left.items() if n != name}
    (name, work), = left.items()
    return clock + work / alone_sps[name]


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
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cfg = load_config(args.config, [*args.overrides, "logging.eval_interval=0", "logging.progress=false"],
                      name="full_run_benchmark")
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
        solo[job.name] = alone(cfg, job, args.seconds)
        r = solo[job.name]
        print(f"alone     {job.name:<14} {r['sps']:>9,.0f} steps/s ({r['agents']} agent(s), "
              f"{r['iteration_s']:.2f} s per iteration, {r['iterations']} timed)", flush=True)
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
          f"{duration(one_by_one)} one job after another")
    print("\nbreakdown of one iteration (device synchronised at each phase), seconds and share:")
    print(f"{'job':<14}" + "".join(f"{p:>17}" for p in (*PHASES, "other", "total")))
    for name, r in solo.items():
        b = r.get("breakdown")
        if b:
            print(f"{name:<14}" + "".join(f"{b[p]:>9.3f} ({100 * b[p] / b['total']:>3.0f}%)"
                                          for p in (*PHASES, "other")) + f"{b['total']:>17.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(cfg), "config": args.config,
                                               "overrides": args.overrides, "alone": solo,
                                               "together": both, "projected_wall_s": wall,
                                               "one_by_one_wall_s": one_by_one}, indent=2))


if __name__ == "__main__":
    main()
