"""ExpGen evaluation speed: env steps/s of ``expgen`` mode with 10 members against 1 member.

    python benchmarks/eval_throughput.py [--members 1,10] [--envs 64] [--episodes 64] [key=value ...]

Builds a throwaway run directory with untrained members and an untrained explorer (speed does not
depend on the weights), then runs the ``expgen`` mode of eval.py per ensemble size: all members in
one batched forward, the explorer's recurrent step and the controller, every step. Untrained agents
play full-length episodes, so a size's run takes the same number of steps whatever it decides.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from agents.networks import NetworkSpec  # noqa: E402
from agents.population import Population  # noqa: E402
from core.checkpoint import save_checkpoint  # noqa: E402
from core.config import load_config, save_config  # noqa: E402
from envs.procgen_vec import ProcgenVecEnv  # noqa: E402
from evaluation.evaluate import evaluate_expgen, evaluation_context  # noqa: E402
from training.learner import network_payload  # noqa: E402


def make_run(root: Path, members: int, overrides: list[str]) -> Path:
    cfg = load_config(None, [f"runs_dir={root}", f"ensemble.size={members}", *overrides], name="bench")
    layout = cfg.layout
    pop = Population(NetworkSpec.from_config(cfg.network), cfg.member_seeds)
    for m in range(members):
        agent = layout.member(m)
        save_checkpoint(agent.checkpoints, 0,
                        {**network_payload(pop.spec, pop.member_state_dict(m)), "agent": agent.name})
    spec = NetworkSpec.from_config(cfg.network, recurrent=True)
    save_checkpoint(layout.explorer.checkpoints, 0,
                    {**network_payload(spec, spec.build().state_dict()), "agent": layout.explorer.name})
    save_config(cfg, layout.config)
    return layout.root


def steps_per_second(run_dir: Path, members: int, envs: int, episodes: int) -> float:
    """Time ``evaluate_expgen`` and count every env step it takes (counted episodes or not)."""
    ctx = evaluation_context(run_dir, [f"expgen.members={members}", f"eval.num_envs={envs}",
                                       f"eval.episodes={episodes}"])
    calls = 0
    original = ProcgenVecEnv.step

    def counting_step(self, actions):
        nonlocal calls
        calls += 1
        return original(self, actions)

    ProcgenVecEnv.step = counting_step
    try:
        start = time.perf_counter()
        evaluate_expgen(ctx)
        elapsed = time.perf_counter() - start
    finally:
        ProcgenVecEnv.step = original
    return calls * envs / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", default="1,10")
    parser.add_argument("--envs", type=int, default=64)
    parser.add_argument("--episodes", type=int, default=64)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    sizes = [int(m) for m in args.members.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = make_run(Path(tmp), max(sizes), ["network.kind=impala", *args.overrides])
        base = None
        for m in sizes:
            sps = steps_per_second(run_dir, m, args.envs, args.episodes)
            base = base or sps
            print(f"expgen evaluation, {m:>2} members: {sps:,.0f} env steps/s "
                  f"({base / sps:.2f}x the time per step of {sizes[0]} member)")


if __name__ == "__main__":
    main()
