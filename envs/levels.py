"""Named level splits: defined once, used by train.py (held-out curves) and eval.py.

ProcGen draws level seeds uniformly from ``[start_level, start_level + num_levels)``. With
``num_levels = 0`` it ignores ``start_level`` and draws from every seed in ``[0, 2**31 - 1)``: the full
distribution, which contains the 200 training seeds with probability ~1e-7 per episode (negligible,
but not zero; and in easy mode some *different* seeds generate the same layout, EXPGEN.md section 4).
EXPGEN.md section 4: agents train on levels [0, 200); the reference tests on [201, 401), the
ProcGen paper on the full distribution.
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


SPLITS: dict[str, LevelRange] = {
    "train": LevelRange(0, 200),
    "test": LevelRange(201, 200),
    "test-full": LevelRange(0, 0),
}


def get_split(name: str, train_levels: LevelRange | None = None) -> LevelRange:
    """Resolve a split name. ``train`` follows the run's own training levels when given."""
    if name == "train" and train_levels is not None:
        return train_levels
    try:
        return SPLITS[name]
    except KeyError:
        raise ValueError(
            f"unknown level split {name!r}; choose one of: {', '.join(SPLITS)}"
        ) from None
