"""Tests of the ExpGen test-time controller (docs/expgen.md, "Controller") with hand-made action tensors."""
from __future__ import annotations

import pytest
import torch

from agents.controller import (
    FOUR_CLASS_NAMES,
    FOUR_CLASSES,
    REFERENCE_BURST_PROBS,
    SIX_CLASS_NAMES,
    SIX_CLASSES,
    ExpGenController,
    sample_burst_lengths,
    scaled_threshold,
)
from core.sections import ExpGenConfig


def acts(*rows: list[int]) -> torch.Tensor:
    """Member actions (M, N) from one list per member."""
    return torch.tensor(rows, dtype=torch.int64)


def members_of(table: torch.Tensor, names: tuple[str, ...], name: str) -> set[int]:
    return set(torch.nonzero(table[names.index(name)]).flatten().tolist())


def make(num_envs: int = 1, seed: int = 0, four_classes: bool = False, **settings: object) -> ExpGenController:
    """A controller from ``expgen`` settings; maze votes over 4 direction classes, heist over 6."""
    settings.setdefault("threshold", 2)
    gen = torch.Generator().manual_seed(seed)
    return ExpGenController(ExpGenConfig(**settings), num_envs, game="maze" if four_classes else "heist", generator=gen)


# --- class tables -------------------------------------------------------------------------------


def test_six_class_table_matches_expgen_md() -> None:
    expected = {
        "up": {5, 2, 8},
        "right": {6, 7, 8},
        "down": {3, 0, 6},
        "left": {0, 1, 2},
        "fire": {9},
        "else": {4, 10, 11, 12, 13, 14},
    }
    assert SIX_CLASSES.shape == (6, 15) and SIX_CLASSES.dtype == torch.bool
    for name, members in expected.items():
        assert members_of(SIX_CLASSES, SIX_CLASS_NAMES, name) == members
    assert SIX_CLASSES[SIX_CLASS_NAMES.index("else"), 4]
    assert not SIX_CLASSES[SIX_CLASS_NAMES.index("else"), 9]
    assert SIX_CLASSES[SIX_CLASS_NAMES.index("fire"), 9]
    assert SIX_CLASSES[SIX_CLASS_NAMES.index("up"), 8]
    assert SIX_CLASSES[SIX_CLASS_NAMES.index("right"), 8]


def test_four_class_table_matches_expgen_md() -> None:
    expected = {"up": {5}, "right": {6, 7, 8}, "down": {3}, "left": {0, 1, 2}}
    assert FOUR_CLASSES.shape == (4, 15)
    for name, members in expected.items():
        assert members_of(FOUR_CLASSES, FOUR_CLASS_NAMES, name) == members


def test_action_4_and_9_count_for_every_member() -> None:
    """The reference's defect (9 instead of 4 in "else" for non-anchors) is not copied."""
    ctrl = make(num_envs=2, threshold=3, burst="fixed")
    # env 0: anchor noop (4), everyone noop or special keys -> "else" has 3 votes.
    # env 1: anchor fire (9), all fire -> 3 votes.
    out = ctrl.step(acts([4, 9], [4, 9], [10, 9]), torch.tensor([0, 0]))
    assert out.votes.tolist() == [3, 3]
    assert out.consensus.tolist() == [True, True]
    assert out.action.tolist() == [4, 9]


# --- voting -------------------------------------------------------------------------------------


def test_overlapping_classes_use_first_class_of_anchor() -> None:
    ctrl = make(threshold=4)
    # Anchor 8 -> "up" {5, 2, 8}: members 5, 2, 8 vote; 7 (right only) does not.
    out = ctrl.step(acts([8], [5], [2], [8], [7]), torch.tensor([0]))
    assert out.votes.tolist() == [4]
    assert out.consensus.tolist() == [True]
    assert out.action.tolist() == [8] and not out.explored.item()


def test_four_classes_votes() -> None:
    ctrl = make(threshold=2, four_classes=True)
    # Anchor 2 -> "left" {0, 1, 2}; 5 is "up" only; with 6 classes 2 would be "up" and 5 would count.
    out = ctrl.step(acts([2], [5], [1]), torch.tensor([0]))
    assert out.votes.tolist() == [2]


def test_consensus_takes_anchor_action() -> None:
    ctrl = make(threshold=3)
    for _ in range(5):
        out = ctrl.step(acts([7], [6], [8]), torch.tensor([11]))
        assert out.action.tolist() == [7]
        assert out.explored.tolist() == [False]
        assert out.consensus.tolist() == [True]


def test_plurality_mode_picks_plurality_action_and_count() -> None:
    ctrl = make(num_envs=3, threshold=3, controller="plurality", burst="fixed")
    members = acts([1, 3, 0], [7, 3, 2], [7, 5, 2], [7, 5, 0], [2, 1, 9])
    out = ctrl.step(members, torch.tensor([14, 14, 14]))
    # env 0: 7 x3; env 1: 3 x2 and 5 x2 -> tie to 3; env 2: 0 x2 and 2 x2 -> tie to 0.
    assert out.votes.tolist() == [3, 2, 2]
    assert out.consensus.tolist() == [True, False, False]
    assert out.action.tolist() == [7, 14, 14]


def test_plurality_tie_break_smallest_id_executed() -> None:
    ctrl = make(threshold=2, controller="plurality")
    out = ctrl.step(acts([9], [3], [9], [3]), torch.tensor([0]))
    assert out.votes.tolist() == [2] and out.action.tolist() == [3]


# --- bursts -------------------------------------------------------------------------------------


def test_fixed_burst_explores_exactly_n_steps_then_revotes() -> None:
    ctrl = make(threshold=2, burst="fixed", burst_length=3)
    disagree = acts([5], [3])
    explored = []
    for t in range(8):
        out = ctrl.step(disagree, torch.tensor([100 + t]))
        explored.append(out.explored.item())
        if out.explored.item():
            assert out.action.item() == 100 + t
    # Disagreement throughout: bursts of 3 chain back to back (re-vote at c=0 starts a new one).
    assert all(explored)
    ctrl.reset()
    pattern = []
    # Step 0 disagrees (burst of 3), then members agree: burst runs out, then anchor resumes.
    for t in range(6):
        members = disagree if t == 0 else acts([5], [5])
        out = ctrl.step(members, torch.tensor([12]))
        pattern.append((out.explored.item(), out.action.item()))
    assert pattern == [(True, 12), (True, 12), (True, 12), (False, 5), (False, 5), (False, 5)]


def test_burst_then_revote_with_disagreement_restarts() -> None:
    ctrl = make(threshold=2, burst="fixed", burst_length=3)
    seq = [acts([5], [3])] + [acts([5], [5])] * 2 + [acts([5], [3])] + [acts([5], [5])] * 4
    flags = [ctrl.step(m, torch.tensor([0])).explored.item() for m in seq]
    # Disagreement at step 3 is seen at c == 0 (burst just ended) and starts a new burst.
    assert flags == [True, True, True, True, True, True, False, False]


def test_counters_are_independent_per_env() -> None:
    ctrl = make(num_envs=2, threshold=2, burst="fixed", burst_length=3)
    members = acts([5, 5], [5, 3])  # env 0 agrees, env 1 does not
    out = ctrl.step(members, torch.tensor([9, 9]))
    assert out.explored.tolist() == [False, True]
    assert out.action.tolist() == [5, 9]
    assert ctrl.counter.tolist() == [0, 3]
    agree = acts([5, 5], [5, 5])
    flags = [ctrl.step(agree, torch.tensor([9, 9])).explored.tolist() for _ in range(3)]
    assert flags == [[False, True], [False, True], [False, False]]


def test_reset_mask_zeroes_only_selected_envs() -> None:
    ctrl = make(num_envs=3, threshold=2, burst="fixed", burst_length=5)
    ctrl.step(acts([5, 5, 5], [3, 3, 3]), torch.tensor([0, 0, 0]))
    ctrl.reset(torch.tensor([True, False, True]))
    assert ctrl.counter.tolist() == [0, 5, 0]
    out = ctrl.step(acts([5, 5, 5], [5, 5, 5]), torch.tensor([1, 1, 1]))
    assert out.explored.tolist() == [False, True, False]


def test_k1_never_explores_in_reference_mode() -> None:
    """k = 1 means "play member 0", unless (unclassed_anchor=up, the authors' lookup) the anchor's
    action is in no 4-class class and no member chose "up": then votes are 0 and it explores."""
    for four in (False, True):
        ctrl = make(num_envs=64, seed=1, threshold=1, four_classes=four, unclassed_anchor="exact")
        gen = torch.Generator().manual_seed(2)
        for _ in range(200):
            members = torch.randint(0, 15, (5, 64), generator=gen)
            out = ctrl.step(members, torch.randint(0, 15, (64,), generator=gen))
            assert not out.explored.any()
            assert torch.equal(out.action, members[0])
            assert (out.votes >= 1).all()


def test_k1_with_the_authors_lookup_explores_only_on_unclassed_anchors_without_up_votes() -> None:
    ctrl = make(num_envs=64, seed=1, threshold=1, four_classes=True, unclassed_anchor="up")
    gen = torch.Generator().manual_seed(2)
    explored_any = False
    for _ in range(200):
        ctrl.reset()  # judge each step alone, not bursts started earlier
        members = torch.randint(0, 15, (5, 64), generator=gen)
        out = ctrl.step(members, torch.randint(0, 15, (64,), generator=gen))
        unclassed = ~FOUR_CLASSES[:, members[0]].any(0)
        no_up = ~(members == 5).any(0)
        assert torch.equal(out.explored, unclassed & no_up)
        explored_any |= bool(out.explored.any())
    assert explored_any


def test_reference_burst_frequencies() -> None:
    n = 200_000
    lengths = sample_burst_lengths(ExpGenConfig(), n, generator=torch.Generator().manual_seed(0))
    assert lengths.min() >= 1 and lengths.max() <= 10
    freq = torch.bincount(lengths - 1, minlength=10).double() / n
    assert torch.allclose(freq, torch.tensor(REFERENCE_BURST_PROBS, dtype=torch.float64), atol=0.005)


@pytest.mark.parametrize("p", [0.5, 0.2])
def test_geometric_burst_mean(p: float) -> None:
    settings = ExpGenConfig(burst="geometric", burst_p=p)
    lengths = sample_burst_lengths(settings, 200_000, generator=torch.Generator().manual_seed(0), burst_max=None)
    assert lengths.min() >= 1
    assert abs(lengths.double().mean().item() - 1 / p) < 0.03 / p
    assert abs((lengths == 1).double().mean().item() - p) < 0.005


def test_geometric_burst_cap() -> None:
    settings = ExpGenConfig(burst="geometric", burst_p=0.1)
    lengths = sample_burst_lengths(settings, 10_000, generator=torch.Generator().manual_seed(0), burst_max=4)
    assert lengths.max() == 4 and lengths.min() == 1


def test_same_seed_same_outputs() -> None:
    def run(seed: int) -> list[torch.Tensor]:
        ctrl = make(num_envs=16, seed=seed, threshold=4, random_explorer=True)
        gen = torch.Generator().manual_seed(123)
        outs = []
        for _ in range(50):
            members = torch.randint(0, 15, (5, 16), generator=gen)
            out = ctrl.step(members, torch.zeros(16, dtype=torch.int64))
            outs += [out.action, out.explored, ctrl.counter.clone()]
        return outs

    a, b, c = run(7), run(7), run(8)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_random_explorer_ablation_ignores_explorer() -> None:
    ctrl = make(num_envs=32, threshold=2, random_explorer=True)
    seen = []
    for _ in range(50):
        out = ctrl.step(acts([5] * 32, [3] * 32), torch.full((32,), 4))
        assert out.explored.all()
        seen.append(out.action)
    ids = torch.cat(seen)
    assert set(ids.tolist()) == set(range(15))
    assert (ids != 4).double().mean() > 0.8


# --- thresholds and config ----------------------------------------------------------------------


def test_scaled_threshold_examples() -> None:
    assert scaled_threshold(6, 10) == 6
    assert scaled_threshold(6, 3) == 2
    assert scaled_threshold(1, 3) == 1
    assert scaled_threshold(1, 10) == 1
    assert scaled_threshold(8, 3) == 3
    assert scaled_threshold(2, 3) == 1
    assert scaled_threshold(10, 1) == 1


def test_settings_for_game() -> None:
    maze = ExpGenController(ExpGenConfig(), 1, game="maze", ensemble_size=3)
    assert maze.threshold == 2 and maze.four_classes and maze.settings.controller == "reference"
    heist = ExpGenController(ExpGenConfig(controller="plurality"), 1, game="heist", ensemble_size=10)
    assert heist.threshold == 8 and not heist.four_classes
    assert ExpGenController(ExpGenConfig(), 1, game="coinrun", ensemble_size=5).threshold == 1
    assert ExpGenController(ExpGenConfig(threshold=4), 1, game="coinrun").threshold == 4  # set: no scaling
    with pytest.raises(ValueError, match="ensemble_size"):
        ExpGenController(ExpGenConfig(), 1, game="maze")
    with pytest.raises(ValueError, match="unknown ProcGen game"):
        ExpGenController(ExpGenConfig(), 1, game="pong", ensemble_size=3)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"controller": "majority"}, "expgen.controller='majority' is not allowed; choose one of: reference, plurality"),
        ({"burst": "poisson"}, "reference, geometric, fixed"),
        ({"threshold": 0}, "expgen.threshold"),
        ({"burst_p": 0.0}, "burst_p"),
        ({"burst_p": 1.5}, "burst_p"),
        ({"burst_length": 0}, "burst_length"),
        ({"burst_max": 0}, "burst_max"),
    ],
)
def test_bad_settings_raise(kwargs: dict, match: str) -> None:
    kwargs.setdefault("threshold", 2)
    burst_max = kwargs.pop("burst_max", 10)
    with pytest.raises(ValueError, match=match):
        ExpGenController(ExpGenConfig(**kwargs), 1, game="maze", burst_max=burst_max)


def test_bad_scaled_threshold_and_inputs_raise() -> None:
    with pytest.raises(ValueError):
        scaled_threshold(0, 10)
    with pytest.raises(ValueError):
        scaled_threshold(6, 0)
    ctrl = make(num_envs=2, threshold=3)
    with pytest.raises(ValueError, match="exceeds the ensemble size"):
        ctrl.step(acts([1, 1], [1, 1]), torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="member_actions"):
        ctrl.step(torch.tensor([1, 1]), torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="explorer_actions"):
        ctrl.step(acts([1, 1], [1, 1], [1, 1]), torch.tensor([0]))
