"""Train ExpGen's agents from a config.

    python train.py --config configs/maze.yaml [key=value ...]

Re-running the same command continues from the newest valid checkpoints.
"""
from __future__ import annotations

import argparse
import logging
import sys

from agents.checkpoint import CheckpointError
from agents.config import ConfigError, load_config
from agents.runner import train_run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML config, e.g. configs/quickstart.yaml")
    parser.add_argument("--resume", action="store_true",
                        help="require existing checkpoints (by default training resumes when there are some)")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. ppo.lr=3e-4 ensemble.size=4")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        cfg = load_config(args.config, args.overrides)
        summaries = train_run(cfg, require_resume=args.resume)
    except (ConfigError, CheckpointError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: checkpoint saved; re-run the same command to continue", file=sys.stderr)
        return 130
    for s in summaries:
        heldout = "  ".join(f"{split}: {', '.join(f'{r:.2f}' for r in v)}" for split, v in s["heldout"].items())
        print(f"{', '.join(s['agents'])}: {s['steps']:,} steps each in {s['wall_s']:.0f}s  {heldout}")
    print(f"run directory: {cfg.run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
