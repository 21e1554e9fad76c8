"""Evaluate a trained run on unseen levels: every member, the ensemble vote, the explorer, ExpGen.

    python eval.py runs/maze [--split test|test-full|train] [--episodes N] [--modes member,vote,...]
                   [--seed S] [--video N] [--device cpu] [--name NAME] [key=value ...]
    python eval.py runs/maze_s0 runs/maze_s1 runs/maze_s2 [options]    # several runs (seeds) of a config

Prints a table with 95% confidence intervals (exact binomial or bootstrap; the table names each),
and ExpGen against the other modes on the same episodes (paired differences), and writes
runs/<name>/eval/results.json, results.md,
results.png, episodes.csv (one row per episode played), TensorBoard events under eval/tb/<split>/
and, with --video, eval/videos/ (with --name NAME: the same files under eval/NAME/). eval/ holds
the run's own split (eval.split of its config.yaml, test by default): another --split without
--name writes eval/<split>/ (read it with compare.py --name <split>), and an evaluation never
replaces a results.json of another split. TensorBoard holds one point per checkpoint step:
re-evaluating the same checkpoints (another --seed, more --episodes) replaces that step's point,
while points of other steps (the run evaluated before it trained further) stay.

Every member is evaluated at one checkpoint step, the newest that all of them have (a run still
training may have newer ones for some members: they are named); when the members share no step,
each member's newest is used and the output and results.json say so (checkpoints.warning; the
TensorBoard point is then at the newest member's step). The explorer is at its own newest step.
Modes that need a missing explorer are skipped with a note; when no mode asked for can run, eval.py
stops with exit status 2 before writing anything.

With several run directories, each is evaluated alike (the same options), then the modes are
aggregated over the runs, the runs being the unit (IQM, mean, median with stratified-bootstrap CIs);
compare.py compares such groups of runs between configs (docs/evaluation.md).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from core.checkpoint import CheckpointError
from core.config import ConfigError, config_help
from core.run_layout import RunLayout
from core.sections import EVAL_MODES
from evaluation.evaluate import evaluate
from evaluation.report import print_table, write_report
from evaluation.runs import compare_runs, group_label, print_comparison, unique_runs


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
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=config_help()
    )
    parser.add_argument("targets", nargs="+", metavar="RUN_DIR_OR_OVERRIDE",
                        help="one or more run directories written by train.py (e.g. runs/maze; several: the "
                             "seeds of a config), and config overrides key=value (e.g. expgen.controller=plurality)")
    parser.add_argument("--split", help="level split: test (levels [201, 401)), test-full, train")
    parser.add_argument("--episodes", type=int, help="episodes per agent and mode")
    parser.add_argument("--modes", help=f"comma-separated: {','.join(EVAL_MODES)}")
    parser.add_argument("--seed", type=int, help="env and sampling seed (same seed, same numbers)")
    parser.add_argument("--video", type=int, help="episodes per mode to record under eval/videos/")
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--name", help="write into <run>/eval/<name>/ instead of <run>/eval/, e.g. --name "
                                       "random_explorer for an ablation (default: the split, for a split "
                                       "other than the run's own)")
    args = parser.parse_intermixed_args(argv)  # flags and key=value in any order
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    # key=value is an override, anything else a run directory (one whose name has a '=' too if it exists)
    runs = [t for t in args.targets if "=" not in t or Path(t).is_dir()]
    overrides = [t for t in args.targets if t not in runs] + flag_overrides(args)
    if not runs:
        print("error: no run directory given (e.g. python eval.py runs/maze)", file=sys.stderr)
        return 2
    kept, notes = unique_runs({"": runs})  # a run given twice (another spelling, a link) is one run
    runs = kept[""]
    for note in notes:
        print(f"warning: {note}", file=sys.stderr)
    name = ""
    for run in runs:
        rc, name = evaluate_one(run, overrides, several=len(runs) > 1)
        if rc:
            return rc
    if len(runs) > 1:
        try:
            comp = compare_runs({group_label(runs): runs}, name=name)
        except (FileNotFoundError, ValueError) as e:
            print(f"error: aggregating the runs: {e}", file=sys.stderr)
            return 2
        print_comparison(comp)
        print(f"compare with another config's runs: python compare.py {' '.join(runs)} --vs RUN ..."
              + (f" --name {name}" if name else ""))
    return 0


def evaluate_one(run: str, overrides: list[str], several: bool) -> tuple[int, str]:
    """Evaluate one run, write and print its report: eval.py's exit status and the evaluation's name."""
    where = f"{run}: " if several else ""
    try:
        evaluation = evaluate(run, overrides)
    except (ConfigError, CheckpointError, FileNotFoundError) as e:
        print(f"error: {where}{e}", file=sys.stderr)
        return 2, ""
    except KeyboardInterrupt:
        print(f"interrupted: {where}no results written", file=sys.stderr)
        return 130, ""
    results, layout = evaluation.results, RunLayout(Path(run))
    try:
        paths = write_report(results, layout, evaluation.episodes)
    except KeyboardInterrupt:
        print(f"interrupted while writing {where}results: files not yet replaced keep the previous evaluation's",
              file=sys.stderr)
        return 130, ""
    print_table(results)
    warning = results["checkpoints"].get("warning")
    if warning:  # said before the episodes too, but a table must not read as one step's without it
        print(f"warning: {warning}")
    for path in [*paths.values(), *(layout.root / v for v in results.get("videos", []))]:
        print(f"wrote {path}")
    return 0, results.get("name", "")


if __name__ == "__main__":
    sys.exit(main())
