"""Print the TensorBoard curves of a run as text: first, best and last value of each scalar;
with ``--plot``, also draw them into one PNG (a panel per tag, a line per agent).

    python benchmarks/curves.py runs/maze [--tags charts/episodic_return,eval/test_return] [--plot curves.png]

For closing notes, docs and headless machines, where opening TensorBoard is not an option.
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


def plot(series_by_agent: dict[str, dict[str, list[tuple[int, float]]]], tags: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tags = [t for t in tags if any(t in s for s in series_by_agent.values())]
    fig, axes = plt.subplots(1, len(tags), figsize=(4.2 * len(tags), 3.4), squeeze=False)
    for ax, tag in zip(axes[0], tags):
        for agent, series in series_by_agent.items():
            if tag in series:
                steps, values = zip(*series[tag])
                ax.plot(steps, values, marker="." if len(steps) < 30 else None, label=agent)
        ax.set_title(tag)
        ax.set_xlabel("env steps (per agent)")
        ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda x, _: f"{x / 1e3:,.0f}k"))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--tags", default=",".join(DEFAULT_TAGS))
    parser.add_argument("--plot", type=Path, help="also write the curves of --tags to this PNG")
    args = parser.parse_args()
    tags = args.tags.split(",")
    by_agent = {}
    for tb in sorted(args.run_dir.glob("*/tb")):
        series = by_agent[tb.parent.name] = scalars(tb)
        for tag in tags:
            points = series.get(tag)
            if points:
                (s0, v0), (s1, v1) = points[0], points[-1]
                best = max(v for _, v in points)
                print(f"{tb.parent.name:>10} {tag:<30} step {s0:>10,} {v0:8.3f} -> step {s1:>10,} "
                      f"{v1:8.3f}  (max {best:.3f}, {len(points)} points)")
    if args.plot:
        plot({a: s for a, s in by_agent.items() if not a.startswith("population")}, tags, args.plot)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
