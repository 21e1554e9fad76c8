"""Throughput of the env and of native PPO training, measured in one run on one machine.

    python benchmarks/throughput.py                       # maze, IMPALA, 64 envs x 256 steps, 3x8
    python benchmarks/throughput.py --members 1,2,4,10    # population of M vs M single-agent runs
    python benchmarks/throughput.py network.kind=small    # any config override

Training steps/s counts env steps of every member per second of wall time, rollout and update
included, after one warm-up iteration (allocator warm-up, cuDNN autotuning). Peak memory is the
process's peak resident set on CPU and the peak allocated CUDA memory on GPU.
"""
from __future__ import annotations

import argparse
import platform
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from agents.config import load_config  # noqa: E402
from agents.networks import resolve_precision  # noqa: E402
from agents.trainer import PopulationTrainer, make_env, resolve_device  # noqa: E402

PAPER = ["env.game=maze", "network.kind=impala", "env.num_envs=64", "ppo.num_steps=256",
         "ppo.epochs=3", "ppo.num_minibatches=8", "logging.eval_interval=0", "logging.progress=false"]


def env_steps_per_second(cfg, seconds: float = 3.0) -> float:
    env = make_env(cfg, cfg.env.num_envs, "train", rand_seed=0)
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


def training_steps_per_second(cfg, members: int, iterations: int, device: torch.device) -> float:
    trainer = PopulationTrainer(cfg, list(range(members)), device)
    trainer.collect(), trainer.learn()  # warm-up
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(iterations):
        trainer.collect()
        {k: v.cpu() for k, v in trainer.learn().items()}
    sync()
    elapsed = time.perf_counter() - start
    trainer.close()
    return iterations * trainer.steps_per_update * members / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", default="1", help="population sizes to measure, e.g. 1,2,4,10")
    parser.add_argument("--iterations", type=int, default=2, help="timed PPO iterations per size")
    parser.add_argument("--precisions", default="auto",
                        help="network.precision values to compare in this run, e.g. auto,fp32")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    sizes = [int(m) for m in args.members.split(",")]
    cfg = load_config(None, PAPER + [f"ensemble.size={max(sizes)}"] + args.overrides, name="benchmark")
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        machine = torch.cuda.get_device_name(device)
    else:
        machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"machine: {machine}; torch {torch.__version__}; game {cfg.env.game}; network {cfg.network.kind}; "
          f"{cfg.env.num_envs} envs x {cfg.ppo.num_steps} steps, "
          f"{cfg.ppo.epochs} epochs x {cfg.ppo.num_minibatches} minibatches")
    print(f"env only: {env_steps_per_second(cfg):,.0f} steps/s ({cfg.env.num_envs} envs, random actions)")
    first = None
    for precision in args.precisions.split(","):
        cfg.network.precision = precision
        trunk = "bf16" if resolve_precision(precision, device) else "fp32"
        single = None
        for m in sizes:
            sps = training_steps_per_second(cfg, m, args.iterations, device)
            single = sps if m == 1 else single
            first = first or sps
            ratio = f", {sps / single:.2f}x the aggregate of {m} single-agent runs" if single and m > 1 else ""
            print(f"native PPO, precision={precision} (trunk {trunk}), population {m:>2}: "
                  f"{sps:,.0f} steps/s aggregate ({sps / first:.2f}x the first line), "
                  f"{sps / m:,.0f} per member, peak memory so far {peak_memory_mb(device):,.0f} MB{ratio}")


if __name__ == "__main__":
    main()
