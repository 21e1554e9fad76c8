"""Compare configs with runs (seeds) as the unit: the evaluations eval.py wrote, aggregated.

    python compare.py runs/maze_s0 runs/maze_s1 runs/maze_s2                       # one config: its modes
    python compare.py runs/maze_s0 runs/maze_s1 runs/maze_s2 --vs runs/abl_s0 runs/abl_s1 runs/abl_s2
                      [--modes expgen,explorer] [--metric return|success|normalised] [--name NAME]
                      [--labels maze,abl] [--out DIR] [--reps N] [--seed S]

Evaluate every run first (``python eval.py RUN ...``, the same --split and --episodes for all). Each
run's score is its mean over episodes of a mode (the members' IQM for ``member``). Per algorithm
(a mode of a group of runs) it prints, with the rliable library (Agarwal et al., NeurIPS 2021;
docs/evaluation.md), the IQM, mean and median over runs with 95% stratified-bootstrap CIs, and the
probability of improvement P(X > Y) (each mode across groups; with one group, ExpGen against the
other modes). A run directory given twice counts once. Intervals need at least 2 runs of each game
(1 run: the point only, with a warning) and cover less than 95% below 5 runs per game (a warning
says so). It writes results.json, results.md and profiles.png (performance profiles) to --out, by
default <runs>/comparisons/<label>_vs_<label>/. --vs may be repeated for more configs.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from evaluation.runs import METRICS, compare_runs, default_out, group_label, print_comparison, write_comparison
from evaluation.statistics import RUN_REPS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run directories of one config (its seeds), each evaluated by eval.py")
    parser.add_argument("--vs", nargs="+", action="append", default=[], metavar="RUN",
                        help="run directories of a config to compare with (repeat for more configs)")
    parser.add_argument("--modes", help="comma-separated modes to compare (default: every mode all runs evaluated)")
    parser.add_argument("--metric", default="auto", choices=["auto", *METRICS],
                        help="run score: mean return (auto for one game), success rate, or normalised score "
                             "(auto for several games)")
    parser.add_argument("--name", default="", help="use each run's evaluation named NAME (eval.py --name)")
    parser.add_argument("--labels", help="comma-separated names of the configs, in order (default: from the run names)")
    parser.add_argument("--out", help="where results.json, results.md and profiles.png go")
    parser.add_argument("--reps", type=int, default=RUN_REPS, help=f"stratified-bootstrap resamples (default {RUN_REPS:,})")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (same seed, same intervals)")
    args = parser.parse_args(argv)
    if args.reps < 1:
        print(f"error: --reps must be at least 1, got {args.reps}", file=sys.stderr)
        return 2
    run_groups = [args.runs, *args.vs]
    labels = [s.strip() for s in args.labels.split(",")] if args.labels else [group_label(g) for g in run_groups]
    if len(labels) != len(run_groups):
        print(f"error: --labels names {len(labels)} configs, but {len(run_groups)} groups of runs were given",
              file=sys.stderr)
        return 2
    if len(set(labels)) < len(labels):  # the same derived name twice: fall back to letters
        labels = [chr(ord("A") + i) for i in range(len(run_groups))] if not args.labels else labels
        if len(set(labels)) < len(labels):
            print(f"error: --labels must be distinct, got {args.labels}", file=sys.stderr)
            return 2
    modes = [m.strip() for m in args.modes.split(",") if m.strip()] if args.modes else None
    try:
        comp = compare_runs(dict(zip(labels, run_groups)), modes, args.metric, args.name, args.reps, args.seed)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print_comparison(comp)
    for path in write_comparison(comp, Path(args.out) if args.out else default_out(comp)).values():
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
