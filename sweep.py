"""Train, evaluate and tabulate a grid of runs (games x seeds x variants) on one Ray cluster.

    python sweep.py --config configs/quickstart.yaml env.game=maze,heist --seeds 2
    python sweep.py --config configs/paper.yaml --config configs/maze_idaac.yaml env.game=maze,heist,jumper --seeds 3
    python sweep.py --config configs/paper.yaml env.game=maze member.algo=ppo,idaac --seeds 3 --ray-address auto

Each --config is a variant; an override with commas (key=v1,v2) is an axis of the grid; --seeds N
makes N independent replicates of every point (replicate i: members from seed + i x ensemble.size,
explorer from explorer.seed + i). Every run is a run directory <runs_dir>/<config>_<values>_s<i>
that train.py, eval.py and compare.py read like any other. All unfinished jobs of all runs train as
one Ray Tune experiment on the cluster (local unless --ray-address or RAY_ADDRESS says otherwise);
then each run is evaluated (eval.* and expgen.* overrides apply) and the variants are compared with
runs as the unit (compare.py's statistics). Re-running the same command skips finished runs and
current evaluations, and resumes the rest. The sweep's table, record and Tune state go to
<runs_dir>/sweeps/<name>/ (docs/distributed.md).
"""
from __future__ import annotations

import argparse
import logging
import sys

from core.config import config_help
from launch.jobs import USER_ERRORS
from launch.sweep import describe, evaluate_runs, expand, tabulate, train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=config_help())
    parser.add_argument("--config", action="append", required=True,
                        help="YAML config of a variant (repeat for several), e.g. configs/paper.yaml")
    parser.add_argument("--seeds", type=int, default=0, help="independent replicates of every grid point")
    parser.add_argument("--name", default="", help="the sweep's name (default: its configs' names)")
    parser.add_argument("--storage", default="",
                        help="Tune's storage path, on storage every node sees (default <runs_dir>/sweeps/<name>/ray)")
    parser.add_argument("--ray-address", default=None,
                        help="join this Ray cluster ('auto' or host:port); default: RAY_ADDRESS, a cluster "
                             "that `ray start` runs here, else Ray started for this sweep")
    parser.add_argument("--no-eval", action="store_true", help="train only: no evaluation, no table")
    parser.add_argument("--dry-run", action="store_true", help="print the runs and exit")
    parser.add_argument("overrides", nargs="*", help="key=value (every run) or key=v1,v2 (an axis)")
    args = parser.parse_intermixed_args(argv)  # flags and key=value in any order
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    overrides = args.overrides + ([f"ray_address={args.ray_address}"] if args.ray_address else [])
    try:
        sweep = expand(args.config, overrides, args.seeds, args.name, args.storage)
        print(describe(sweep), flush=True)
        if args.dry_run:
            return 0
        train(sweep)
        if args.no_eval:
            return 0
        errors = evaluate_runs(sweep)
        if errors:
            print("error: evaluating " + "; ".join(errors), file=sys.stderr)
            return 2
        tabulate(sweep)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:  # runs that cannot be compared (compare_runs)
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: checkpoints kept; re-run the same command to continue", file=sys.stderr)
        return 130
    except RuntimeError as e:  # trials that failed more often than resources.max_failures
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
