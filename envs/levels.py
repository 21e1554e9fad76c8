"""Named level splits, derived from the training range: used by held-out curves and eval.py.

ProcGen draws level seeds uniformly from ``[start_level, start_level + num_levels)``. With
``num_levels = 0`` it ignores ``start_level`` and draws from every seed in ``[0, 2**31 - 1)``.

- ``train``: the training range itself (default [0, 200)).
- ``test``: as in the authors' code, the next ``num_levels`` levels after a gap of one:
  ``[start + num + 1, start + 2 * num + 1)``, so [201, 401) for the default range. Never overlaps
  training; undefined when training already uses every level (``num_levels = 0``).
- ``test-full``: the full distribution (the ProcGen paper's protocol). It includes the training
  seeds: each episode meets one of 200 training levels with probability ~1e-7 (and in easy mode
  some *different* seeds generate the same layout), so it is unseen levels in practice, not by
  construction.
"""
from __future__ import annotations

from dataclasses import dataclass

MAX_LEVEL_SEED = 2**31 - 1


@dataclass(frozen=True)
class LevelRange:
    start_level: int
    num_levels: int  # 0 = unbounded

    def __post_init__(self) -> None:
        if self.start_level < 0 or self.start_level > MAX_LEVEL_SEED:
            raise ValueError(
                f"start_level must be in [0, {MAX_LEVEL_SEED}], got {self.start_level}"
            )
        if self.num_levels < 0:
            raise ValueError(
                f"num_levels must be >= 0 (0 means the full distribution), got {self.num_levels}"
            )
        if self.start_level + self.num_levels > MAX_LEVEL_SEED:
            raise ValueError(
                f"level range [{self.start_level}, {self.start_level + self.num_levels}) "
                f"exceeds procgen's largest level seed {MAX_LEVEL_SEED}"
            )

    def contains(self, seed: int) -> bool:
        if self.num_levels == 0:
            return 0 <= seed <= MAX_LEVEL_SEED
        return self.start_level <= seed < self.start_level + self.num_levels

    def describe(self) -> str:
        if self.num_levels == 0:
            return "all levels (the full distribution)"
        return f"levels [{self.start_level}, {self.start_level + self.num_levels})"


SPLITS = ("train", "test", "test-full")
DEFAULT_TRAIN = LevelRange(0, 200)


def get_split(name: str, train_levels: LevelRange = DEFAULT_TRAIN) -> LevelRange:
    """The levels of split ``name`` for a run trained on ``train_levels``."""
    if name == "train":
        return train_levels
    if name == "test-full":
        return LevelRange(0, 0)
    if name == "test":
        if train_levels.num_levels == 0:
            raise ValueError("training on the full distribution (env.num_levels=0) leaves no unseen "
                             "levels for split 'test'; evaluate on test-full, knowing it is the training "
                             "distribution")
        return LevelRange(train_levels.start_level + train_levels.num_levels + 1, train_levels.num_levels)
    raise ValueError(f"unknown level split {name!r}; choose one of: {', '.join(SPLITS)}")
