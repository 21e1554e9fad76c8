"""Does a faster precision learn the same policy? The same config and seeds trained once per precision,
each run evaluated on its training levels and on unseen levels, then compared with runs as the unit.

    python benchmarks/precision_check.py                                  # CPU: fp32 vs bf16, 4 seeds
    python benchmarks/precision_check.py --precisions fp32,tf32,bf16      # CUDA: TF32 too
    python benchmarks/precision_check.py --seeds 0,1,2 --config configs/quickstart.yaml ppo.total_steps=131072

A precision is ``fp32`` (IEEE fp32 everywhere: ``network.precision=fp32 network.tf32=false``), ``tf32``
(CUDA only: fp32 weights, TF32 tensor cores for convolutions, matmuls and cuDNN's GRU), or ``bf16``
(the convolutional trunk in bf16 autocast; weights, Adam, heads and losses in fp32). Default scale:
the quickstart's maze level 22 with the small CNN, one member per run, members only (no explorer),
163,840 steps: members go from ~4 to ~10 on that level in this budget, so "learns the same" is a
statement about runs that learn. Each run is an ordinary run directory, ``runs/<prefix>_<precision>_s<seed>``;
re-running skips what is trained and evaluated (train.py and eval.py keep their promises per run).

For each precision it writes, through ``compare.py``, the runs' final returns on the training level
(``--split train``) and on unseen levels (``test-full``), IQM and mean with 95% stratified-bootstrap
CIs and P(precision > fp32), under ``runs/comparisons/<prefix>_<split>/``; the held-out curves of
training (``eval/train_return``, ``eval/test-full_return`` in each run's TensorBoard) are printed side by
side and written to ``runs/comparisons/<prefix>_curves/curves.md``.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.curves import scalars  # noqa: E402

PRECISION_OVERRIDES = {
    "fp32": ["network.precision=fp32", "network.tf32=false"],
    "tf32": ["network.precision=fp32", "network.tf32=true"],
    "bf16": ["network.precision=bf16", "network.tf32=false"],
}
SCALE = ["ensemble.size=1", "explorer.enabled=false", "ray=false"]


def run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def curves_table(runs: dict[str, list[str]], splits: tuple[str, ...]) -> str:
    """Markdown: per split, each precision's held-out curve during training (member 0's
    ``eval/<split>_return``) as the mean over its runs at each evaluated step, then each run's own."""
    lines = []
    for split in splits:
        tag = f"eval/{split}_return"
        per = {p: [dict(scalars(ROOT / r / "member_0" / "tb").get(tag, [])) for r in rs] for p, rs in runs.items()}
        steps = sorted(set.intersection(*(set(c) for cs in per.values() for c in cs)))
        lines += [f"\n`{tag}` (mean over runs; runs in order of seed)\n",
                  "| step | " + " | ".join(per) + " |", "|---:|" + "---|" * len(per)]
        for step in steps:
            cells = [f"{np.mean([c[step] for c in cs]):.2f} ({' '.join(f'{c[step]:.1f}' for c in cs)})"
                     for cs in per.values()]
            lines.append(f"| {step:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/quickstart.yaml")
    parser.add_argument("--precisions", default="fp32,bf16", help=f"comma-separated, from {', '.join(PRECISION_OVERRIDES)}")
    parser.add_argument("--seeds", default="0,1,2,3", help="one run per seed and precision")
    parser.add_argument("--prefix", default="precision", help="run names: <prefix>_<precision>_s<seed>")
    parser.add_argument("--episodes", type=int, default=48, help="eval.py episodes per run and split")
    parser.add_argument("overrides", nargs="*", help="config overrides for every run, e.g. ppo.total_steps=131072")
    args = parser.parse_args(argv)
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    unknown = [p for p in precisions if p not in PRECISION_OVERRIDES]
    if unknown or "fp32" not in precisions or len(precisions) < 2:
        parser.error(f"--precisions: fp32 and at least one of {', '.join(PRECISION_OVERRIDES)} (got {args.precisions})")
    seeds = [int(s) for s in args.seeds.split(",")]
    py = sys.executable
    runs = {p: [f"runs/{args.prefix}_{p}_s{s}" for s in seeds] for p in precisions}
    for s in seeds:  # seed-major: an interrupted check still has complete pairs to compare
        for p in precisions:
            name = f"{args.prefix}_{p}_s{s}"
            run([py, "train.py", "--config", args.config, f"name={name}", f"seed={s}", *SCALE,
                 *PRECISION_OVERRIDES[p], *args.overrides])
            run([py, "eval.py", f"runs/{name}", "--split", "train", "--modes", "member", "--name", "train",
                 "--episodes", str(args.episodes)])
            run([py, "eval.py", f"runs/{name}", "--split", "test-full", "--modes", "member", "--name", "test-full",
                 "--episodes", str(args.episodes)])
    others = [p for p in precisions if p != "fp32"]
    for split in ("train", "test-full"):
        vs = [a for p in others for a in ("--vs", *runs[p])]
        run([py, "compare.py", *runs["fp32"], *vs, "--name", split, "--labels", ",".join(["fp32", *others]),
             "--out", f"runs/comparisons/{args.prefix}_{split}"])
    table = curves_table(runs, ("train", "test-full"))
    out = ROOT / "runs" / "comparisons" / f"{args.prefix}_curves" / "curves.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table)
    print(table + f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
