"""The explorer's per-step costs on the latency chain, timed alone on this machine's device:

- ``gru`` : one minibatch replay through the GRU (``networks.gru_sequence``), forward and backward,
  T = 512 steps (``ppo.num_steps`` of configs/paper.yaml) of B envs, hidden 256, with episode
  starts at a rate of 1 per 100 steps and env;
- ``knn`` : one step of the kNN reward (``embed_frames`` + ``EpisodicKNNReward.step``) for 32 envs
  (the paper's ``env.num_envs``), buffer 500, on random frames with an episode end every 100 steps;
- ``env`` : one rollout step's env stepping (``envs/full_view.py:FullViewPair``, the paper's 32
  envs, random actions, the same seed and actions for every case), per game of ``--env-games``:
  ``serial`` is the explorer's stepping before ``explorer.env_threads``: each batch on one procgen
  thread (``env.num_threads=1``), the full-view twin after the agent view; ``pair t`` is
  ``FullViewPair.step`` (the twin beside the agent view) with t procgen threads per batch
  (``--env-threads``; -1: one per CPU core of this machine, as ``explorer.env_threads``' auto
  with ``resources.explorer_cpus`` that large). The cases step in
  interleaved blocks of 25 steps, so a load that comes and goes on a shared machine falls on
  all of them; each case then checks that it ended in the same procgen states as ``serial``.

    python benchmarks/explorer_latency.py                 # B = 4 (32 envs / 8 minibatches) and 256
    python benchmarks/explorer_latency.py --batch 4 --reps 9 --threads 1
    python benchmarks/explorer_latency.py --batch --no-knn --env-games coinrun maze --env-threads 0 2 -1

Prints the median, min and max over ``--reps`` repetitions (after one warm-up; ``env``: over its
blocks) in milliseconds. Wall time, device synchronised; on a shared machine the numbers are
indicative only.
"""
from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from agents.knn_reward import EpisodicKNNReward, embed_frames, embedding_dim, embedding_scale  # noqa: E402
from agents.networks import gru_sequence  # noqa: E402
from core.sections import EnvConfig  # noqa: E402
from envs.full_view import FullViewPair  # noqa: E402
from envs.make import make_env  # noqa: E402
from training.explorer_learner import auto_env_threads, available_cores  # noqa: E402

STEPS, HIDDEN, ENVS, BUFFER, START_RATE = 512, 256, 32, 500, 0.01
ENV_SEED, BLOCK = 1000, 25  # explorer.seed's default; steps per interleaved block


def timed(fn: Callable[[], object], reps: int, device: torch.device) -> list[float]:
    """Milliseconds of ``reps`` calls of ``fn``, after one untimed warm-up call."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()
    out = []
    for _ in range(reps):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        out.append(1e3 * (time.perf_counter() - start))
    return out


def gru_replay(batch: int, device: torch.device) -> Callable[[], object]:
    gen = torch.Generator().manual_seed(0)
    cell = nn.GRUCell(HIDDEN, HIDDEN).to(device)
    weights = [cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh]
    x = torch.randn(STEPS, batch, HIDDEN, generator=gen).to(device).requires_grad_()
    state = torch.randn(batch, HIDDEN, generator=gen).to(device)
    starts = (torch.rand(STEPS, batch, generator=gen) < START_RATE).float().to(device)

    def run() -> object:
        out, final = gru_sequence(x, state, starts, weights)
        return torch.autograd.grad(out.sum() + final.sum(), [x, *weights])

    return run


def knn_steps(device: torch.device) -> Callable[[], object]:
    gen = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (64, ENVS, 64, 64, 3), dtype=torch.uint8, generator=gen).to(device)
    dones = (torch.rand(64, ENVS, generator=gen) < START_RATE).to(device)
    knn = EpisodicKNNReward(ENVS, embedding_dim(), 3, BUFFER, device, scale=embedding_scale())
    knn.reset(embed_frames(frames[0]))
    for i in range(BUFFER):  # a full buffer: every step measures the kNN over all 500 slots
        knn.step(embed_frames(frames[i % 64]), torch.zeros(ENVS, dtype=torch.bool, device=device))
    step = [0]

    def run() -> object:
        i = step[0] = (step[0] + 1) % 64
        return knn.step(embed_frames(frames[i]), dones[i])

    return run


def env_cases(game: str, threads: list[int]) -> dict[str, tuple[FullViewPair, Callable]]:
    """The ``env`` cases of ``game`` (module docstring): name -> (pair, step(pair, actions))."""
    def build(t: int) -> FullViewPair:
        make = functools.partial(make_env, EnvConfig(game=game, num_envs=ENVS, num_threads=t), split="train",
                                 rand_seed=ENV_SEED)
        pair = FullViewPair(make, ENVS)
        pair.reset(seed=ENV_SEED)
        return pair

    def serial(pair: FullViewPair, actions: np.ndarray) -> None:
        pair.agent.step(0, actions)
        if pair.twin:
            pair.full.step(0, actions)

    cases = {"serial, 1 thread": (build(1), serial)}
    for t in dict.fromkeys(auto_env_threads(ENVS, available_cores()) if t < 0 else t for t in threads):
        cases[f"pair, {t} thread{'s' * (t != 1)}"] = (build(t), lambda pair, actions: pair.step(0, actions))
    return cases


def time_env(game: str, threads: list[int], steps: int) -> None:
    """Time and print the ``env`` cases of ``game`` over ``steps`` steps each, interleaved."""
    cases = env_cases(game, threads)
    twin = next(iter(cases.values()))[0].twin
    actions = np.random.default_rng(0).integers(0, 15, (steps, ENVS))
    ms: dict[str, list[float]] = {name: [] for name in cases}
    for start in range(0, steps, BLOCK):
        for name, (pair, step) in cases.items():
            block = actions[start:start + BLOCK]
            begin = time.perf_counter()
            for a in block:
                step(pair, a)
            ms[name].append(1e3 * (time.perf_counter() - begin) / len(block))
    states = {name: pair.get_state() for name, (pair, _) in cases.items()}
    for pair, _ in cases.values():
        pair.close()
    reference = states["serial, 1 thread"]
    for name, t in ms.items():
        same = all(states[name][view]["procgen"] == reference[view]["procgen"] for view in reference)
        print(f"env {game:<8} {'twin' if twin else 'no twin':<7} {name:<18} median {statistics.median(t):6.2f} ms  "
              f"(min {min(t):.2f}, max {max(t):.2f}, {len(t)} blocks of {BLOCK}){'' if same else '  STATES DIFFER'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, nargs="*", default=[4, 256], help="envs per GRU replay (none: skip)")
    parser.add_argument("--no-knn", action="store_true", help="skip the kNN reward step")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: PyTorch's default)")
    parser.add_argument("--env-games", nargs="*", default=["coinrun", "maze"], help="games of the env cases (none: skip)")
    parser.add_argument("--env-threads", type=int, nargs="+", default=[-1],
                        help="procgen threads per batch of the pair cases (-1: one per CPU core here)")
    parser.add_argument("--env-steps", type=int, default=400, help="env steps per case")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = [(f"gru T={STEPS} B={b} H={HIDDEN} fwd+bwd", gru_replay(b, device)) for b in args.batch]
    if not args.no_knn:
        cases.append((f"knn step N={ENVS} buffer={BUFFER}", knn_steps(device)))
    print(f"device {device}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"{available_cores()} CPU cores")
    for name, fn in cases:
        ms = timed(fn, args.reps, device)
        print(f"{name:<34} median {statistics.median(ms):9.2f} ms  (min {min(ms):.2f}, max {max(ms):.2f}, "
              f"{len(ms)} reps)")
    for game in args.env_games:
        time_env(game, args.env_threads, args.env_steps)


if __name__ == "__main__":
    main()
