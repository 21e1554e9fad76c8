"""Tests of evaluation/statistics.py's paired differences (episodes as the unit, within one
evaluation) and of its aggregates over runs (runs as the unit), against reference computations:
scipy's one-sample bootstrap of the differences, a plain numpy bootstrap, normal theory and cases
worked out by hand."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from evaluation.statistics import (
    AGGREGATES,
    iqm,
    mean_difference,
    mean_minus_iqm,
    paired_bootstrap_ci,
    paired_difference,
    performance_profile,
    probability_of_improvement,
    stratified_bootstrap,
    unpaired_normal_ci,
)


def correlated(n: int = 400, seed: int = 0, members: int = 0):
    """Returns on shared levels: each level has its own difficulty, which every agent meets."""
    rng = np.random.default_rng(seed)
    level = rng.normal(5.0, 3.0, n)
    a = level + rng.normal(0.3, 1.0, n)
    others = [level + rng.normal(0.0, 1.0, n) for _ in range(max(members, 1))]
    return a, others


def test_paired_ci_is_the_bootstrap_of_the_differences() -> None:
    """Resampling episodes jointly is bootstrapping the episode-wise differences: scipy's one-sample
    BCa bootstrap of a - b, with the same random stream, gives the same interval."""
    a, (b,) = correlated()
    low, high = paired_bootstrap_ci([a, b], mean_difference, seed=3)
    ref = sps.bootstrap((a - b,), np.mean, method="BCa", rng=np.random.default_rng(3), vectorized=True)
    assert low == pytest.approx(ref.confidence_interval.low, abs=1e-9)
    assert high == pytest.approx(ref.confidence_interval.high, abs=1e-9)


def test_paired_ci_agrees_with_normal_theory() -> None:
    """Symmetric differences, many episodes: mean(d) +- 1.96 sd(d) / sqrt(n), within 5% of its width."""
    a, (b,) = correlated(n=3000, seed=1)
    d = a - b
    half = 1.959964 * d.std(ddof=1) / np.sqrt(d.size)
    r = paired_difference(a, [b], seed=0)
    assert r["difference"] == pytest.approx(d.mean())
    assert r["ci"][0] == pytest.approx(d.mean() - half, abs=0.05 * half)
    assert r["ci"][1] == pytest.approx(d.mean() + half, abs=0.05 * half)
    assert r["episodes"] == 3000


def test_hand_computed_cases() -> None:
    a = np.array([1.0, 4.0, 2.0, 8.0])
    assert paired_bootstrap_ci([a, a - 2.0], mean_difference) == pytest.approx((2.0, 2.0))  # constant difference
    assert paired_bootstrap_ci([np.full(5, 3.0), np.full(5, 1.0)], mean_difference) == (2.0, 2.0)
    assert paired_bootstrap_ci([np.array([3.0]), np.array([1.0])], mean_difference) == (2.0, 2.0)
    # one member: ExpGen minus the members' IQM is ExpGen minus that member
    b = np.array([0.0, 5.0, 1.0, 2.0])
    assert paired_difference(a, [b])["difference"] == paired_difference(a, [b, b, b])["difference"] == 1.75
    with pytest.raises(ValueError, match="one length"):
        paired_bootstrap_ci([a, a[:3]], mean_difference)


def test_paired_is_tighter_than_unpaired_on_correlated_data() -> None:
    """The level-to-level spread both modes share cancels in the paired interval only."""
    a, (b,) = correlated()
    low, high = paired_difference(a, [b])["ci"]
    un_low, un_high = unpaired_normal_ci(a, b)
    boot = sps.bootstrap((a, b), mean_difference, paired=False, vectorized=True, method="percentile",
                         rng=np.random.default_rng(0)).confidence_interval  # unpaired bootstrap too
    assert high - low < 0.5 * (un_high - un_low) and high - low < 0.5 * (boot.high - boot.low)
    assert low < (a - b).mean() < high and low > 0 > un_low  # paired resolves +0.3, unpaired does not


def test_difference_to_the_members_iqm_against_a_plain_bootstrap() -> None:
    """ExpGen minus the IQM of 4 members' means: the same episodes resampled for all five, against a
    numpy loop of percentile resamples (BCa and percentile agree closely on these symmetric data)."""
    a, members = correlated(n=300, seed=2, members=4)
    r = paired_difference(a, members, seed=0)
    assert r["difference"] == pytest.approx(a.mean() - iqm(np.array([m.mean() for m in members])))
    rng = np.random.default_rng(5)
    idx = rng.integers(0, a.size, (4000, a.size))
    boot = a[idx].mean(1) - iqm(np.stack([m[idx].mean(1) for m in members]), axis=0)
    ref_low, ref_high = np.percentile(boot, [2.5, 97.5])
    width = ref_high - ref_low
    assert r["ci"][0] == pytest.approx(ref_low, abs=0.1 * width)
    assert r["ci"][1] == pytest.approx(ref_high, abs=0.1 * width)
    assert float(mean_minus_iqm(a, *members)) == pytest.approx(r["difference"])


# ---- runs as the unit ----------------------------------------------------------------------------


def test_probability_of_improvement_by_hand() -> None:
    # pairs of runs (x, y): 1>0, 2>0, 3>0, 3>2 win; 2=2 counts one half -> 4.5 / 9
    p, low, high = probability_of_improvement([np.array([1.0, 2.0, 3.0])], [np.array([0.0, 2.0, 4.0])], reps=500)
    assert p == pytest.approx(0.5) and 0.0 <= low <= p <= high <= 1.0
    # two tasks: averaged over tasks (X always above on the first, always below on the second)
    p, low, high = probability_of_improvement([np.array([5.0, 6.0]), np.array([0.0])],
                                              [np.array([1.0]), np.array([3.0, 4.0])], reps=500)
    assert (p, low, high) == (0.5, 0.5, 0.5)
    with pytest.raises(ValueError, match="same tasks"):
        probability_of_improvement([np.ones(2)], [np.ones(2), np.ones(2)])


def test_stratified_bootstrap_resamples_within_each_task() -> None:
    """Task A's 2 runs score 0, task B's 3 runs score 1: a stratified resample always has 2 and 3
    runs of them, so the pooled mean is 3/5 in every resample (an unstratified one would vary)."""
    assert stratified_bootstrap([np.zeros(2), np.ones(3)], AGGREGATES["mean"], reps=1000) == pytest.approx((0.6,) * 3)
    with pytest.raises(ValueError, match="at least one run"):
        stratified_bootstrap([np.zeros(2), np.zeros(0)], AGGREGATES["mean"])


def test_one_task_is_an_ordinary_percentile_bootstrap() -> None:
    x = np.random.default_rng(4).normal(0.5, 0.2, 10)
    point, low, high = stratified_bootstrap([x], AGGREGATES["iqm"], reps=20_000, seed=1)
    ref = sps.bootstrap((x,), iqm, method="percentile", rng=np.random.default_rng(2), n_resamples=20_000,
                        vectorized=True).confidence_interval
    assert point == pytest.approx(float(iqm(x)))
    assert low == pytest.approx(ref.low, abs=0.01) and high == pytest.approx(ref.high, abs=0.01)
    assert AGGREGATES["median"](x) == np.median(x)


def test_performance_profile_by_hand() -> None:
    taus = np.array([0.0, 0.5, 0.65, 1.0])
    # task 1: runs 0.4, 0.6, 0.9; task 2: run 0.7 -> per task fractions averaged
    fraction, low, high = performance_profile([np.array([0.4, 0.6, 0.9]), np.array([0.7])], taus, reps=300)
    np.testing.assert_allclose(fraction, [1.0, (2 / 3 + 1) / 2, (1 / 3 + 1) / 2, 0.0])
    assert (low <= fraction + 1e-12).all() and (fraction <= high + 1e-12).all()
