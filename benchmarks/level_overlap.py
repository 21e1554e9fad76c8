"""How many `test` seeds build a training level, for every game and mode (docs/levels.md).

    python benchmarks/level_overlap.py [--games maze,coinrun] [--modes easy,hard] [--json PATH]

For each game and distribution mode, on the default split (training seeds [0, 200), test seeds
[201, 401), envs/levels.py), fingerprints every level of both ranges (envs/fingerprints.py) as
played (``exact``) and without its drawing-only options (``structure``), computed now (the cache
is neither read nor written), and prints one Markdown row: test seeds whose level equals a training
level, distinct levels among the 200 training seeds, and the wall time of the row.

``--json PATH`` keeps the rows in PATH, merged with the rows already there (one run per mode fits
in a few minutes on a 2-core CPU), and prints the table of every row PATH holds, with the CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from envs.fingerprints import KINDS, compute_fingerprints  # noqa: E402
from envs.games import DISTRIBUTION_MODES, GAMES, get_game  # noqa: E402
from envs.levels import DEFAULT_TRAIN, get_split  # noqa: E402

HEADER = ("| game | mode | frame | test seeds = a training level, exact | ... structure | "
          "distinct training levels, exact | ... structure | time (s) |\n"
          "|---|---|---|---:|---:|---:|---:|---:|")


def overlap(game: str, mode: str) -> dict:
    """Counts for one game and mode, over both fingerprint kinds."""
    train, test = DEFAULT_TRAIN, get_split("test", DEFAULT_TRAIN)
    start = time.perf_counter()
    row: dict = {"game": game, "mode": mode, "frame_px": get_game(game).level_frame_px}
    for kind in KINDS:
        fps = compute_fingerprints(game, mode, [*range(train.start_level, train.start_level + train.num_levels),
                                                *range(test.start_level, test.start_level + test.num_levels)], kind)
        train_fp, test_fp = fps[:train.num_levels], fps[train.num_levels:]
        repeats = np.flatnonzero(np.isin(test_fp, train_fp)) + test.start_level
        row[kind] = {"test_repeats": len(repeats), "distinct_train": len(np.unique(train_fp)),
                     "repeated_test_seeds": repeats.tolist()}
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row


def table_row(r: dict) -> str:
    e, s = r["exact"], r["structure"]
    return (f"| {r['game']} | {r['mode']} | {r['frame_px']} px | {e['test_repeats']} | {s['test_repeats']} | "
            f"{e['distinct_train']} | {s['distinct_train']} | {r['seconds']} |")


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        name = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        name = platform.processor() or "unknown CPU"
    return f"{name}, {os.cpu_count()} cores visible"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--games", default=",".join(GAMES), help="comma-separated (default: all 16)")
    parser.add_argument("--modes", default=",".join(DISTRIBUTION_MODES), help="easy,hard (default: both)")
    parser.add_argument("--json", type=Path, help="merge the rows into this file and print all of them")
    args = parser.parse_args()
    games, modes = args.games.split(","), args.modes.split(",")
    for g in games:
        get_game(g)
    rows: dict[str, dict] = {}
    if args.json is not None and args.json.exists():
        rows = {f"{r['game']}/{r['mode']}": r for r in json.loads(args.json.read_text())["rows"]}
    print(HEADER, flush=True)
    start = time.perf_counter()
    for game in games:
        for mode in modes:
            row = overlap(game, mode)
            rows[f"{game}/{mode}"] = row
            print(table_row(row), flush=True)
    print(f"\n{len(games) * len(modes)} rows in {time.perf_counter() - start:.0f} s on {cpu_model()}")
    if args.json is not None:
        ordered = sorted(rows.values(), key=lambda r: (r["mode"] != "easy", r["game"]))
        args.json.write_text(json.dumps({"cpu": cpu_model(), "rows": ordered}, indent=1))
        total = sum(r["seconds"] for r in ordered)
        print(f"\nall rows in {args.json} ({total:.0f} s of row time):\n\n{HEADER}")
        for r in ordered:
            print(table_row(r))


if __name__ == "__main__":
    main()
