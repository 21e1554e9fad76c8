"""Evaluate a trained run on unseen levels: every member, the ensemble vote, the explorer, ExpGen.

    python eval.py runs/maze [--split test|test-full|train] [--episodes N] [--modes member,vote,...]
                   [--seed S] [--video N] [--device cpu] [--name NAME] [key=value ...]

Prints a table with 95% bootstrap confidence intervals and writes runs/<name>/eval/results.json,
results.md, results.png, TensorBoard events under eval/tb/<split>/ and, with --video, eval/videos/
(with --name NAME: the same files under eval/NAME/). TensorBoard holds one point per checkpoint
step: re-evaluating the same checkpoints (another --seed, more --episodes) replaces that step's
point, while points of other steps (the run evaluated before it trained further) stay.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from core.checkpoint import CheckpointError
from core.config import ConfigError
from core.run_layout import RunLayout
from evaluation.evaluate import evaluate_run
from evaluation.report import print_table, write_report


def flag_overrides(args: argparse.Namespace) -> list[str]:
    """The convenience flags as config overrides (they win over key=value ones)."""
    pairs = [("eval.split", args.split), ("eval.episodes", args.episodes), ("eval.seed", args.seed),
             ("eval.video", args.video), ("eval.name", args.name), ("device", args.device)]
    out = [f"{k}={v}" for k, v in pairs if v is not None]
    if args.modes is not None:
        out.append(f"eval.modes=[{','.join(m.strip() for m in args.modes.split(',') if m.strip())}]")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dir", help="a run directory written by train.py, e.g. runs/maze")
    parser.add_argument("--split", help="level split: test (levels [201, 401)), test-full, train")
    parser.add_argument("--episodes", type=int, help="episodes per agent and mode")
    parser.add_argument("--modes", help="comma-separated: member,vote,explorer,expgen")
    parser.add_argument("--seed", type=int, help="env and sampling seed (same seed, same numbers)")
    parser.add_argument("--video", type=int, help="episodes per mode to record under eval/videos/")
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--name", help="write into <run>/eval/<name>/ instead of <run>/eval/, "
                                       "e.g. --name train for a train-split table beside the test one")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. expgen.controller=plurality")
    args = parser.parse_intermixed_args(argv)  # flags and key=value in any order
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        results = evaluate_run(args.run_dir, list(args.overrides) + flag_overrides(args))
    except (ConfigError, CheckpointError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: no results written", file=sys.stderr)
        return 130
    layout = RunLayout(Path(args.run_dir))
    try:
        paths = write_report(results, layout)
    except KeyboardInterrupt:
        print("interrupted while writing results: files not yet replaced keep the previous evaluation's",
              file=sys.stderr)
        return 130
    print_table(results)
    for path in [*paths.values(), *(layout.root / v for v in results.get("videos", []))]:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
