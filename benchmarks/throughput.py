"""Throughput of the env and of native PPO training, measured in one run on one machine.

    python benchmarks/throughput.py                       # maze, IMPALA, 64 envs x 256 steps, 3x8
    python benchmarks/throughput.py --members 1,2,4,10    # population of M vs M single-agent runs
    python benchmarks/throughput.py --engines native,sb3,rllib   # the same agent under each engine
    python benchmarks/throughput.py network.kind=small    # any config override
    python benchmarks/throughput.py member.algo=idaac                        # IDAAC members

Training steps/s counts env steps of every member per second of wall time, rollout and update
included, after one warm-up iteration (allocator warm-up, cuDNN autotuning). Each measurement
runs in a fresh process, so that peak memory (the process's peak resident set on CPU, the peak
allocated CUDA memory on GPU) is that measurement's own and no engine inherits another's state.
Engines sb3 and rllib train one member per process (their PPO has no population axis); rllib
samples in the trial's own process here (``rllib.num_env_runners=0``), as the other two do.
"""
from __future__ import annotations

import argparse
import multiprocessing
import platform
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from core.config import load_config, validate  # noqa: E402
from core.runtime import Runtime, resolve_bf16, resolve_device  # noqa: E402
from envs.make import make_env  # noqa: E402
from launch.jobs import Job, build_learner  # noqa: E402

PAPER = ["env.game=maze", "network.kind=impala", "env.num_envs=64", "ppo.num_steps=256",
         "ppo.epochs=3", "ppo.num_minibatches=8", "logging.eval_interval=0", "logging.progress=false"]


def env_steps_per_second(cfg, seconds: float = 3.0) -> float:
    env = make_env(cfg.env, cfg.env.num_envs, "train", rand_seed=0)
    env.reset(seed=0)
    actions = np.random.default_rng(0).integers(0, 15, (1000, cfg.env.num_envs))
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        env.step(actions[steps % 1000])
        steps += 1
    env.close()
    return steps * cfg.env.num_envs / (time.perf_counter() - start)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def training_steps_per_second(cfg, members: int, iterations: int) -> tuple[float, float]:
    """(aggregate steps/s, peak memory in MB) of ``members`` trained together by ``cfg.engine``."""
    runtime = Runtime.from_config(cfg)
    device = runtime.device
    learner = build_learner(cfg, Job("members", tuple(range(members))), runtime)
    learner.iterate()  # warm-up
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(iterations):
        learner.iterate()  # rollout + update; metrics are read on the host (the one sync)
    sync()
    elapsed = time.perf_counter() - start
    learner.close()
    return iterations * learner.steps_per_update * members / elapsed, peak_memory_mb(device)


def measure(cfg, members: int, iterations: int) -> tuple[float, float]:
    """``training_steps_per_second`` in a fresh process (its own peak memory, threads, Ray)."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(training_steps_per_second, cfg, members, iterations).result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", default="1", help="population sizes to measure, e.g. 1,2,4,10")
    parser.add_argument("--iterations", type=int, default=2, help="timed PPO iterations per size")
    parser.add_argument("--precisions", default="auto",
                        help="network.precision values to compare in this run, e.g. auto,fp32")
    parser.add_argument("--engines", default="native",
                        help="engines to compare in this run, e.g. native,sb3,rllib (one member each "
                             "for sb3 and rllib)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    sizes = [int(m) for m in args.members.split(",")]
    cfg = load_config(None, PAPER + [f"ensemble.size={max(sizes)}"] + args.overrides, name="benchmark")
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        machine = torch.cuda.get_device_name(device)
    else:
        machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"machine: {machine}; torch {torch.__version__}; game {cfg.env.game}; network {cfg.network.kind}; "
          f"{cfg.env.num_envs} envs x {cfg.ppo.num_steps} steps, "
          f"{cfg.ppo.epochs} epochs x {cfg.ppo.num_minibatches} minibatches")
    print(f"env only: {env_steps_per_second(cfg):,.0f} steps/s ({cfg.env.num_envs} envs, random actions)")
    first = None
    for engine in args.engines.split(","):
        for precision in args.precisions.split(","):
            run_cfg = replace(cfg, engine=engine, network=replace(cfg.network, precision=precision))
            validate(run_cfg)
            trunk = "bf16" if resolve_bf16(precision, device) else "fp32"
            single = None
            for m in sizes if engine == "native" else [1]:
                sps, peak = measure(run_cfg, m, args.iterations)
                single = sps if m == 1 else single
                first = first or sps
                ratio = f", {sps / single:.2f}x the aggregate of {m} single-agent runs" if single and m > 1 else ""
                algo = run_cfg.member.algo.upper() if engine == "native" else "PPO"  # member.algo: native only
                print(f"{engine} {algo}, precision={precision} (trunk {trunk}), population {m:>2}: "
                      f"{sps:,.0f} steps/s aggregate ({sps / first:.2f}x the first line), "
                      f"{sps / m:,.0f} per member, peak memory {peak:,.0f} MB{ratio}", flush=True)


if __name__ == "__main__":
    main()
