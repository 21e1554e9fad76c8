"""Whether a code change leaves training bit for bit unchanged: train short runs (two PPO members
with sample minibatches, two with whole-sequence minibatches, one member and the explorer, two
IDAAC members), then save every final checkpoint's weights and optimiser states, or compare them
with a saved set (``torch.equal`` on every tensor; when some differ, the largest difference).

    git checkout <before> && python benchmarks/same_weights.py save /tmp/before   # (copy this file there if it lacks it)
    git checkout <after>  && python benchmarks/same_weights.py compare /tmp/before

Runs on the CPU with one thread (about 30 s); the runs go to a temporary folder.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from core.checkpoint import load_latest  # noqa: E402
from launch.run import train_run  # noqa: E402
from tests.helpers import make_small_cfg  # noqa: E402

RUNS = [("samples", ["ppo.minibatch=samples"]), ("sequences", ["ppo.minibatch=sequences"]),
        ("explorer", ["explorer.enabled=true", "explorer.total_steps=64", "ensemble.size=1"]),
        ("idaac", ["member.algo=idaac", "ppo.minibatch=samples"])]


def tensors_in(tree: object, prefix: str) -> dict[str, torch.Tensor]:
    """Every tensor of a nested dict/list (an optimiser state, one list or a dict of them), by path."""
    if torch.is_tensor(tree):
        return {prefix: tree}
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list | tuple) else ()
    return {k: v for key, sub in items for k, v in tensors_in(sub, f"{prefix}/{key}").items()}


def final_tensors(runs_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    out = {}
    for name, extra in RUNS:
        cfg = make_small_cfg(runs_dir, "ensemble.size=2", "ppo.total_steps=96", "ppo.epochs=2", *extra, name=name)
        train_run(cfg)
        agents = [cfg.layout.member(m) for m in range(cfg.ensemble.size)]
        agents += [cfg.layout.explorer] if cfg.explorer.enabled else []
        for agent in agents:
            ckpt = load_latest(agent.checkpoints, "cpu")
            flat = {f"model/{k}": v for k, v in ckpt["model"].items()}
            flat.update(tensors_in(ckpt["optimizer"], "opt"))
            out[f"{name}/{agent.name}"] = flat
    return out


def main() -> None:
    if len(sys.argv) != 3 or sys.argv[1] not in ("save", "compare"):
        sys.exit(__doc__)
    torch.set_num_threads(1)
    folder = Path(sys.argv[2])
    with tempfile.TemporaryDirectory() as tmp:
        got = final_tensors(Path(tmp))
    if sys.argv[1] == "save":
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(got, folder / "final.pt")
        print(f"saved {sum(map(len, got.values()))} tensors of {len(got)} agents to {folder}")
        return
    want = torch.load(folder / "final.pt")
    if want.keys() != got.keys():
        sys.exit(f"different agents: {sorted(want)} vs {sorted(got)}")
    differ = [f"{a}:{k}" for a in want for k in want[a] if k not in got[a] or not torch.equal(want[a][k], got[a][k])]
    if differ:
        # How far: a change that only reorders rounding moves weights by float32's last bits.
        gaps = [(want[a][k].double() - got[a][k].double()).abs().max().item()
                for a in want for k in want[a] if k in got[a] and want[a][k].shape == got[a][k].shape]
        scale = max(v.abs().max().item() for a in want for v in want[a].values() if v.numel())
        sys.exit(f"{len(differ)} tensors differ, e.g. {differ[:5]}; the largest difference is "
                 f"{max(gaps, default=float('nan')):.3g} (the largest value {scale:.3g})")
    print(f"equal: all {sum(map(len, want.values()))} tensors of {len(want)} agents (torch.equal)")


if __name__ == "__main__":
    main()
