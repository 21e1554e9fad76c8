"""Named level splits, derived from the training range: used by held-out curves and eval.py.

ProcGen draws level seeds uniformly from ``[start_level, start_level + num_levels)``. With
``num_levels = 0`` it ignores ``start_level`` and draws from every seed in ``[0, 2**31 - 1)``.

- ``train``: the training range itself (default [0, 200)).
- ``test``: as in the authors' code, the next ``num_levels`` seeds after a gap of one:
  ``[start + num + 1, start + 2 * num + 1)``, so [201, 401) for the default range; undefined when
  training already uses every level (``num_levels = 0``). Its *seeds* never overlap training, but
  its *levels* can: different seeds can generate the same level (openai/procgen#100). In maze easy,
  test seeds 217, 273 and 391 render exactly training levels 72, 0 and 46, and 19 of the 200 test
  seeds have a training level's layout; docs/levels.md has the counts of every game.
- ``test-full``: the full distribution (the ProcGen paper's protocol). A training *seed* comes up
  with probability ~1e-7 per episode, a training *level* far more often: in maze easy 34 of 1,024
  random seeds (3%) build exactly one of the 200 training levels and 142 (14%) one's layout; in
  coinrun easy 1 and 242 (24%).

``eval.unseen`` (``UNSEEN_RULES``) says which seeds of ``test`` and ``test-full`` are removed because
their level equals a training level: ``exact`` (renders exactly like one, as played), ``structure``
(the default: has one's layout, drawn without backgrounds, themes or colours; it removes every
seed ``exact`` removes, and in maze, coinrun, ninja and leaper many more) or ``none`` (the paper's
raw seed split). Episodes that start on a removed seed are played but not counted
(``evaluation/episodes.py:run_episodes(skip_levels=)``); for ``test-full`` the seeds the
evaluation's envs will start on are procgen's own draws, predicted from the batch's ``rand_seed``
and checked before playing. ``envs/fingerprints.py:unseen_levels`` computes a ``LevelExclusion``;
``unseen_summary`` describes it for reports.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

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


Split = Literal["train", "test", "test-full"]  # the config types its split keys with it
SPLITS: tuple[str, ...] = get_args(Split)
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


# ---- unseen levels (eval.unseen) -----------------------------------------------------------------

UnseenRule = Literal["exact", "structure", "none"]
UNSEEN_RULES: tuple[str, ...] = get_args(UnseenRule)
# What a removed seed has in common with a training level, per rule (reports quote it).
UNSEEN_RULE_TEXT = {
    "exact": "build exactly a training level, as played",
    "structure": "build a training level's layout, drawing-only options aside",
    "none": "raw seed split: levels equal to a training level are kept",
}


def check_unseen_rule(rule: str, split: str, train_levels: LevelRange = DEFAULT_TRAIN) -> str:
    """``rule`` if it applies to ``split``; raises ValueError naming the allowed rules otherwise.

    A rule other than ``none`` cannot apply to ``test-full`` when training uses every level
    (``num_levels = 0``): every level is then a training level.
    """
    if rule not in UNSEEN_RULES:
        raise ValueError(f"unknown unseen-level rule {rule!r}; choose one of: {', '.join(UNSEEN_RULES)}")
    if rule != "none" and split == "test-full" and train_levels.num_levels == 0:
        raise ValueError("training on the full distribution (env.num_levels=0) leaves no unseen level "
                         "in test-full; set eval.unseen=none to evaluate on the training distribution")
    return rule


@dataclass(frozen=True)
class LevelExclusion:
    """The seeds of one evaluation's split that are removed because their level equals a training level.

    ``rule``: the rule applied (``none`` for the ``train`` split, where it does not apply).
    ``checked``: how many distinct seeds were compared with the training levels: the whole range
    for ``test``; for ``test-full``, the seeds the evaluation's envs start on until their episode
    quotas are met (0 when nothing was compared). ``excluded``: the removed seeds, a subset of those.
    """

    split: str
    rule: str
    levels: LevelRange
    train_levels: LevelRange
    checked: int = 0
    excluded: frozenset[int] = field(default_factory=frozenset)


def unseen_summary(exclusion: LevelExclusion) -> dict[str, Any]:
    """The rule and how many seeds it removed and kept, JSON-ready, for results and reports.

    Keys: ``split``, ``levels`` (the split's seed range in words), ``rule``, ``rule_text``,
    ``checked``, ``removed``, ``kept`` (None where the split is unbounded and nothing was checked),
    ``removed_seeds`` (sorted) and ``text``, one sentence saying all of it.
    """
    e = exclusion
    removed = len(e.excluded)
    if e.levels.num_levels:
        kept: int | None = e.levels.num_levels - removed
    else:
        kept = e.checked - removed if e.checked else None
    where = e.levels.describe()
    if e.split == "train":
        text = f"{where}: the training levels (eval.unseen does not apply)"
    elif e.rule == "none":
        text = f"{where}, raw seed split (eval.unseen=none): levels equal to a training level are not removed"
    elif e.levels.num_levels:
        text = (f"{where} less the {removed} seed(s) that {UNSEEN_RULE_TEXT[e.rule]} "
                f"(eval.unseen={e.rule}): {kept} kept")
    else:
        text = (f"{where} less the seeds that {UNSEEN_RULE_TEXT[e.rule]} (eval.unseen={e.rule}): "
                f"{removed} of the {e.checked} seeds the envs start on, skipped")
    return {"split": e.split, "levels": where, "rule": e.rule, "rule_text": UNSEEN_RULE_TEXT[e.rule],
            "checked": e.checked, "removed": removed, "kept": kept,
            "removed_seeds": sorted(e.excluded), "text": text}
