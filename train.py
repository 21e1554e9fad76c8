"""Train ExpGen's agents from a config: N reward agents and the explorer, as Ray Tune trials.

    python train.py --config configs/maze.yaml [key=value ...]
    python train.py --config configs/maze.yaml --ray-address auto     # join a running Ray cluster
    python train.py --config configs/quickstart.yaml ray=false        # no Ray: jobs side by side here

Re-running the same command continues every unfinished agent from its newest checkpoint and skips
finished ones. A run's own saved config continues that run where its folder now is, even after the
folder was moved or renamed (the file's runs_dir and name say where it was trained):

    python train.py --config archive/maze/config.yaml ppo.total_steps=50000000   # trains archive/maze
    python train.py --config archive/maze/config.yaml name=maze_s1 seed=1        # a new run: <the file's runs_dir>/maze_s1

A run's name is one plain folder name under runs_dir, kept as typed (name=007 is runs/007).
"""
from __future__ import annotations

import argparse
import logging
import sys

from rich.console import Console
from rich.table import Table

from core.config import config_help
from launch.jobs import USER_ERRORS
from launch.run import load_training_config, train_run


def summary_table(summary: dict) -> Table:
    """Steps, the last held-out return of every split the run evaluates (named as the split) and
    the job wall time, per agent."""
    table = Table(title=f"{summary['run_dir']}: {summary['wall_s']:.0f} s wall time "
                        f"({'Ray' if summary['ray'] else 'without Ray'})")
    splits = list(dict.fromkeys(k.removesuffix("_return") for a in summary["agents"] for k in a
                                if k.endswith("_return")))
    for col in ("agent", "steps", *(f"{s} return" for s in splits), "job wall time"):
        table.add_column(col, justify="left" if col == "agent" else "right")
    fmt = lambda v: "-" if v is None else f"{v:.2f}"
    for a in summary["agents"]:
        table.add_row(a["agent"], f"{a['steps']:,}", *(fmt(a.get(f"{s}_return")) for s in splits),
                      f"{a['job_wall_s']:.0f} s" if a["job_wall_s"] else "(already done)")
    return table


def help_epilog(argv: list[str] | None) -> str:
    """--help's list of config keys: with ``--config FILE`` (and overrides) before it, each key's
    value in that config, the settings a run would train with; else the schema's defaults."""
    args = sys.argv[1:] if argv is None else argv
    if not {"-h", "--help"} & set(args):
        return ""
    known, rest = argparse.ArgumentParser(add_help=False), [a for a in args if a not in ("-h", "--help")]
    known.add_argument("--config")
    parsed, overrides = known.parse_known_args(rest)
    if parsed.config:
        try:
            return config_help(load_training_config(parsed.config, [o for o in overrides if "=" in o]), parsed.config)
        except Exception as e:  # noqa: BLE001 - --help still lists the keys, and says why not with values
            return f"({parsed.config}: {e}; the schema's defaults follow)\n" + config_help()
    return config_help()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=help_epilog(argv))
    parser.add_argument("--config", required=True, help="YAML config, e.g. configs/quickstart.yaml, or a run's own "
                        "config.yaml (continues that run where its folder now is)")
    parser.add_argument("--resume", action="store_true",
                        help="require existing checkpoints (by default training resumes when there are some)")
    parser.add_argument("--ray-address", default=None,
                        help="join this Ray cluster ('auto' or host:port); default: start Ray locally")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. ppo.lr=3e-4 ensemble.size=4")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    overrides = args.overrides + ([f"ray_address={args.ray_address}"] if args.ray_address else [])
    try:
        cfg = load_training_config(args.config, overrides)
        summary = train_run(cfg, require_resume=args.resume)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: checkpoints kept; re-run the same command to continue", file=sys.stderr)
        return 130
    except RuntimeError as e:  # trials that failed more often than resources.max_failures, or a job's process
        print(f"error: {e}", file=sys.stderr)
        return 1
    Console().print(summary_table(summary))
    root = cfg.layout.root
    print(f"run directory: {root} (summary.json there; evaluate with: python eval.py {root})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
