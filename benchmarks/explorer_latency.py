"""The explorer's two per-step costs on the latency chain, timed alone on this machine's device:

- ``gru`` : one minibatch replay through the GRU (``networks.gru_sequence``), forward and backward,
  T = 512 steps (``ppo.num_steps`` of configs/paper.yaml) of B envs, hidden 256, with episode
  starts at a rate of 1 per 100 steps and env;
- ``knn`` : one step of the kNN reward (``embed_frames`` + ``EpisodicKNNReward.step``) for 32 envs
  (the paper's ``env.num_envs``), buffer 500, on random frames with an episode end every 100 steps.

    python benchmarks/explorer_latency.py                 # B = 4 (32 envs / 8 minibatches) and 256
    python benchmarks/explorer_latency.py --batch 4 --reps 9 --threads 1

Prints the median, min and max over ``--reps`` repetitions (after one warm-up) in milliseconds.
Wall time, device synchronised; on a shared machine the numbers are indicative only.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from agents.knn_reward import EpisodicKNNReward, embed_frames, embedding_dim, embedding_scale  # noqa: E402
from agents.networks import gru_sequence  # noqa: E402

STEPS, HIDDEN, ENVS, BUFFER, START_RATE = 512, 256, 32, 500, 0.01


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, nargs="+", default=[4, 256], help="envs per GRU replay")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: PyTorch's default)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = [(f"gru T={STEPS} B={b} H={HIDDEN} fwd+bwd", gru_replay(b, device)) for b in args.batch]
    cases.append((f"knn step N={ENVS} buffer={BUFFER}", knn_steps(device)))
    print(f"device {device}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    for name, fn in cases:
        ms = timed(fn, args.reps, device)
        print(f"{name:<34} median {statistics.median(ms):9.2f} ms  (min {min(ms):.2f}, max {max(ms):.2f}, "
              f"{len(ms)} reps)")


if __name__ == "__main__":
    main()
