"""The run directory: the one place that knows where a run's files live.

::

    runs/<name>/config.yaml                      the config the run was trained with
    runs/<name>/member_<i>/checkpoints/, tb/     reward agent i
    runs/<name>/explorer/checkpoints/, tb/       the exploration agent
    runs/<name>/population_<a>-<b>/tb/           curves summarised over a job's members (a,b,...: not consecutive)
    runs/<name>/summary.json                     steps, held-out returns and wall time per agent
    runs/<name>/ray/                             Ray Tune's own state
    runs/<name>/eval/                            eval.py's reports, tb/<split>/, videos/

train.py, eval.py, the Ray trials and the reports all ask a ``RunLayout`` for paths; nothing else
spells a folder name, and nothing parses one back (an ``AgentDir`` carries its member index).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class AgentDir:
    """One agent's folder: its checkpoints and TensorBoard curves."""

    path: Path
    member: int | None  # the ensemble index of a reward agent; None for the explorer

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def tb(self) -> Path:
        return self.path / "tb"


@dataclass(frozen=True)
class RunLayout:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    def has_run(self) -> bool:
        """Whether train.py has trained here, or started to: the lock it takes first, the summary
        it writes last, or an agent's folder (a run moved elsewhere keeps them all)."""
        return (self.lock.is_file() or self.summary.is_file() or self.explorer.path.is_dir()
                or any(p.is_dir() for p in self.root.glob("member_*")))

    @property
    def lock(self) -> Path:
        """Held by the train.py process that trains this run (launch/run.py)."""
        return self.root / ".lock"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def ray(self) -> Path:
        return self.root / "ray"

    def eval(self, name: str = "") -> Path:
        """Where eval.py writes: ``eval/``, or ``eval/<name>`` for a named evaluation (``--name``),
        so ablations and other splits sit beside the main results instead of overwriting them."""
        return self.root / "eval" / name if name else self.root / "eval"

    def videos(self, name: str = "") -> Path:
        return self.eval(name) / "videos"

    def eval_tb(self, split: str, name: str = "") -> Path:
        return self.eval(name) / "tb" / split

    def member(self, index: int) -> AgentDir:
        return AgentDir(self.root / f"member_{index}", index)

    @property
    def explorer(self) -> AgentDir:
        return AgentDir(self.root / "explorer", None)

    def population_tb(self, members: list[int] | tuple[int, ...]) -> Path:
        """Summary curves of the job that trains ``members`` together."""
        return self.root / f"population_{members_label(members)}" / "tb"


def members_label(members: list[int] | tuple[int, ...]) -> str:
    """``0-3`` for consecutive members 0..3, ``0,2`` otherwise (a shard split by progress)."""
    first, last = members[0], members[-1]
    return f"{first}-{last}" if list(members) == list(range(first, last + 1)) else ",".join(map(str, members))
