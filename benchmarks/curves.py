"""Print the TensorBoard curves of a run as text: first, best and last value of each scalar.

    python benchmarks/curves.py runs/maze [--tags charts/episodic_return,eval/test_return]

For closing notes and headless machines, where opening TensorBoard is not an option.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

DEFAULT_TAGS = ("charts/episodic_return", "charts/SPS", "eval/train_return", "eval/test_return",
                "eval/test_success", "explore/intrinsic_return", "explore/level_complete_rate")


def scalars(tb_dir: Path) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--tags", default=",".join(DEFAULT_TAGS))
    args = parser.parse_args()
    tags = args.tags.split(",")
    for tb in sorted(args.run_dir.glob("*/tb")):
        series = scalars(tb)
        for tag in tags:
            points = series.get(tag)
            if points:
                (s0, v0), (s1, v1) = points[0], points[-1]
                best = max(v for _, v in points)
                print(f"{tb.parent.name:>10} {tag:<30} step {s0:>10,} {v0:8.3f} -> step {s1:>10,} "
                      f"{v1:8.3f}  (max {best:.3f}, {len(points)} points)")


if __name__ == "__main__":
    main()
