"""SIGKILL an in-process training run at random moments, re-run it each time, and check the result.

    python benchmarks/kill_resume.py [--kills 10] [--seed 0] [--out /tmp/kill_resume]

Trains a small run (2 reward agents as one population + the explorer, a checkpoint every update,
so kills land during updates, checkpoint writes and before the first checkpoint), kills the
train.py process after a random delay, re-runs the same command, and repeats. Then it runs the
command once more to completion and checks, for every agent: the final step count is exactly the
budget; every TensorBoard step appears once per tag as TensorBoard shows it (members, population
summary, explorer); no checkpoint temporaries are left. Prints the counts; exits 1 on a failure.
"""
from __future__ import annotations

import argparse
import logging
import random
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.checkpoint import checkpoint_steps  # noqa: E402
from core.config import load_config  # noqa: E402
from tests import processes  # noqa: E402

SETTINGS = ["ray=false", "device=cpu", "logging.progress=false", "network.kind=small", "env.num_envs=8",
            "ppo.num_steps=32", "ppo.num_minibatches=4", "ppo.epochs=1", "ensemble.size=2",
            "ppo.total_steps=2048", "explorer.total_steps=1536", "explorer.buffer_size=64",
            "logging.checkpoint_interval=1", "logging.eval_interval=2", "logging.eval_episodes=4"]


# TensorBoard logs each purge it applies (expected after every kill): keep the report readable.
logging.getLogger("tensorboard").setLevel(logging.ERROR)


def repeated_steps(tb_dir: Path) -> dict[str, list[int]]:
    """Tags whose steps repeat, as TensorBoard shows them (it honours purge events)."""
    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    acc.Reload()
    out = {}
    for tag in acc.Tags()["scalars"]:
        counts = Counter(e.step for e in acc.Scalars(tag))
        dup = sorted(s for s, c in counts.items() if c > 1)
        if dup:
            out[tag] = dup
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("/tmp/kill_resume"))
    parser.add_argument("--max-delay", type=float, default=25.0, help="seconds; kills fall uniformly in [1, max]")
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    cmd = [sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "configs/quickstart.yaml"),
           f"runs_dir={args.out}", "name=kill", *SETTINGS]
    rng = random.Random(args.seed)
    cfg = load_config(ROOT / "configs/quickstart.yaml", [f"runs_dir={args.out}", "name=kill", *SETTINGS])
    agents = [cfg.layout.member(0), cfg.layout.member(1), cfg.layout.explorer]
    killed = 0
    for i in range(args.kills):
        delay = rng.uniform(1.0, args.max_delay)
        # Its own session: the jobs it trains side by side stay in it, also once orphaned.
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            proc.wait(timeout=delay)
            print(f"run {i + 1}: finished before its kill at {delay:.1f} s")
        except KeyboardInterrupt:  # its own session: Ctrl-C here does not reach it by itself
            proc.send_signal(signal.SIGINT)
            proc.wait()
            raise
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            # Its jobs die with it (launch/side_by_side.py); the next run starts once they are gone.
            left = processes.wait_gone(processes.session(proc.pid), timeout_s=120)
            if left:
                print(f"FAIL run {i + 1}: processes {sorted(left)} outlived the killed run")
                return 1
            killed += 1
            steps = {a.name: max(checkpoint_steps(a.checkpoints), default=0) for a in agents}
            print(f"run {i + 1}: SIGKILL after {delay:.1f} s; newest checkpoints {steps}", flush=True)
    final = subprocess.run(cmd, capture_output=True, text=True)
    failures = []
    if final.returncode != 0:
        failures.append(f"final run exited {final.returncode}: {final.stderr[-500:]}")
    for agent, explorer in zip(agents, (False, False, True)):
        newest = max(checkpoint_steps(agent.checkpoints), default=0)
        if newest != cfg.final_step(explorer):
            failures.append(f"{agent.name}: newest checkpoint at {newest}, budget {cfg.final_step(explorer)}")
        stale = list(agent.checkpoints.glob(".tmp_*"))
        if stale:
            failures.append(f"{agent.name}: stale temporaries {stale}")
    tb_dirs = [a.tb for a in agents] + [cfg.layout.population_tb([0, 1])]
    for tb in tb_dirs:
        dup = repeated_steps(tb)
        if dup:
            failures.append(f"{tb}: repeated steps {dup}")
    print(f"{killed} kills, {args.kills - killed} runs that finished first; {len(tb_dirs)} TensorBoard "
          f"folders checked; final steps exact: {not any('newest checkpoint' in f for f in failures)}")
    for f in failures:
        print("FAIL", f)
    print("OK" if not failures else f"{len(failures)} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
