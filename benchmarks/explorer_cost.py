"""What the kNN entropy reward costs inside an explorer training iteration (target: < 10%).

    python benchmarks/explorer_cost.py                      # maze, IMPALA, paper rollout (32 x 512)
    python benchmarks/explorer_cost.py network.kind=small   # any config override

Times whole iterations (rollout + recurrent PPO update) after a warm-up iteration, and inside them
the time spent in the reward (pooling the full-view frames + the batched kNN over the episode
buffers), synchronising the device around each reward call so that the share is not hidden.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from core.config import load_config  # noqa: E402
from core.runtime import Runtime  # noqa: E402
from training import explorer_learner as explorer_module  # noqa: E402
from training.explorer_learner import ExplorerLearner  # noqa: E402

DEFAULTS = ["env.game=maze", "network.kind=impala", "env.num_envs=32", "ppo.num_steps=512",
            "ppo.epochs=3", "ppo.num_minibatches=8", "logging.eval_interval=0", "logging.progress=false"]


class Timed:
    """Wraps a function, accumulating its wall time (device synchronised)."""

    def __init__(self, fn, device: torch.device) -> None:
        self.fn, self.total = fn, 0.0
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def __call__(self, *args, **kwargs):
        self.sync()
        start = time.perf_counter()
        out = self.fn(*args, **kwargs)
        self.sync()
        self.total += time.perf_counter() - start
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=1)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cfg = load_config(None, DEFAULTS + args.overrides, name="benchmark")
    runtime = Runtime.from_config(cfg)
    device = runtime.device
    trainer = ExplorerLearner(cfg, runtime)
    trainer.iterate()  # warm-up
    embed = explorer_module.embed_frames = Timed(explorer_module.embed_frames, device)
    knn = trainer.knn.step = Timed(trainer.knn.step, device)
    start = time.perf_counter()
    for _ in range(args.iterations):
        trainer.iterate()  # rollout + recurrent PPO update; metrics read on the host
    total = time.perf_counter() - start
    reward = embed.total + knn.total
    steps = args.iterations * trainer.steps_per_update
    print(f"explorer ({cfg.network.kind}, {cfg.env.num_envs} envs x {cfg.ppo.num_steps} steps, {device}): "
          f"{steps / total:,.0f} steps/s; per iteration {total / args.iterations:.2f}s, of which reward "
          f"{reward / args.iterations:.2f}s = {100 * reward / total:.1f}% "
          f"(pooling {100 * embed.total / total:.1f}%, kNN {100 * knn.total / total:.1f}%)")
    trainer.close()


if __name__ == "__main__":
    main()
