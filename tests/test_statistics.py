"""Tests of evaluation/statistics.py against reference computations made here independently:
scipy's one-sample BCa bootstrap of per-episode (or per-level) sums, Clopper-Pearson bounds from the
beta distribution, normal theory, cases worked out by hand, and rliable's own functions called
directly on the same scores and seed."""
from __future__ import annotations

import numpy as np
import pytest
from rliable import library as rly
from rliable import metrics as rly_metrics
from scipy import stats as sps

from core.config import load_config
from evaluation.episodes import EpisodeStats
from evaluation.statistics import (
    EXACT,
    NO_SPREAD,
    improvement_probability,
    iqm,
    iqm_of_means,
    iqm_summary,
    mean_difference,
    mean_minus_iqm,
    paired_bootstrap_ci,
    paired_difference,
    performance_profile,
    probability_of_improvement,
    run_aggregates,
    score_distribution,
    summarize,
    summarize_stats,
    unpaired_normal_ci,
)
from tests.helpers import QUICKSTART

SEED = 12345


def correlated(n: int = 400, seed: int = 0, members: int = 0):
    """Returns on shared levels: each level has its own difficulty, which every agent meets."""
    rng = np.random.default_rng(seed)
    level = rng.normal(5.0, 3.0, n)
    a = level + rng.normal(0.3, 1.0, n)
    others = [level + rng.normal(0.0, 1.0, n) for _ in range(max(members, 1))]
    return a, others


def maze_like(n: int = 48, agents: int = 2, seed: int = 1) -> list[np.ndarray]:
    """Maze returns, 0 or 10 (float32 as eval.py plays them), of agents on the same levels: each
    level has a difficulty that every agent meets, so successes are correlated."""
    rng = np.random.default_rng(seed)
    easy = rng.random(n)
    return [((rng.random(n) < 0.1 * k + 0.6 * easy) * 10.0).astype(np.float32) for k in range(agents)]


def bca(values: np.ndarray, seed: int) -> tuple[float, float]:
    """scipy's one-sample BCa bootstrap of the mean: the reference."""
    ci = sps.bootstrap((values,), np.mean, method="BCa", rng=np.random.default_rng(seed), batch=500).confidence_interval
    return float(ci.low), float(ci.high)


def clopper_pearson_by_beta(k: int, n: int) -> list[float]:
    """Clopper-Pearson from its definition (beta quantiles), without scipy's binomtest."""
    low = 0.0 if k == 0 else sps.beta.ppf(0.025, k, n - k + 1)
    high = 1.0 if k == n else sps.beta.ppf(0.975, k + 1, n - k)
    return [float(low), float(high)]


def cfg_of(game: str):
    return load_config(QUICKSTART, [f"env.game={game}", f"eval.seed={SEED}"])


def episode_stats(returns: list[np.ndarray], successes: list[np.ndarray]) -> EpisodeStats:
    g, n = len(returns), returns[0].size
    return EpisodeStats(returns=np.stack(returns).astype(np.float32), lengths=np.full((g, n), 100),
                        level_seeds=np.tile(np.arange(n), (g, 1)), successes=np.stack(successes),
                        env_slots=np.arange(n), env_episodes=np.zeros(n, np.int64))


# ---- paired differences ----------------------------------------------------------------------------


def test_paired_difference_on_0_10_returns_is_scipys_bca_of_the_differences() -> None:
    """Maze's 0-or-10 returns: many resamples tie with the point estimate, and BCa's bias correction
    counts them. The paired interval is scipy's BCa of the per-episode differences (same random
    stream), exactly, where mean(a) - mean(b) computed per resample (rounding twice) breaks ties and
    gives another interval on these data."""
    a, b = maze_like()
    for seed in (0, 1, 3):
        r = paired_difference(a, [b], seed)
        d = a.astype(np.float64) - b.astype(np.float64)
        assert r["ci"] == list(bca(d, seed)) and r["method"] == "BCa, episodes"
        assert r["difference"] == d.mean() and r["episodes"] == 48
    rounding_twice = sps.bootstrap((a.astype(np.float64), b.astype(np.float64)),
                                   lambda x, y, axis: np.mean(x, axis) - np.mean(y, axis), paired=True,
                                   method="BCa", rng=np.random.default_rng(0), batch=500).confidence_interval
    assert [rounding_twice.low, rounding_twice.high] != paired_difference(a, [b], 0)["ci"]  # the data have ties
    s = paired_difference(a > 0, [b > 0], 0)  # the success difference, 0/1
    assert s["ci"] == list(bca((a > 0).astype(float) - (b > 0), 0))


def test_difference_to_three_members_iqm_on_0_10_returns() -> None:
    """With 3 members the IQM trims nothing: ExpGen minus the members' IQM is the mean over levels of
    (3 a - sum of the members) / 3, an integer per level before the division: scipy's BCa of it."""
    a, *members = maze_like(agents=4, seed=2)
    r = paired_difference(a, members, SEED)
    per_level = 3 * a.astype(np.float64) - np.sum(members, axis=0, dtype=np.float64)
    low, high = bca(per_level, SEED)
    assert r["ci"] == [low / 3, high / 3]
    assert r["difference"] == pytest.approx(a.mean() - np.mean([m.mean() for m in members]))


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


def test_no_spread_no_interval() -> None:
    a = np.array([1.0, 4.0, 2.0, 8.0])
    assert paired_difference(a, [a - 2.0]) == {"difference": 2.0, "ci": None, "method": NO_SPREAD, "episodes": 4}
    assert paired_bootstrap_ci([np.full(5, 3.0), np.full(5, 1.0)], mean_difference).ci is None
    assert paired_bootstrap_ci([np.array([3.0]), np.array([1.0])], mean_difference).ci is None
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
    """ExpGen minus the IQM of 4 members' means (one trimmed at each end): the same episodes
    resampled for all five, against a numpy loop of percentile resamples (BCa and percentile agree
    closely on these symmetric data)."""
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


def test_percentile_where_bca_is_undefined() -> None:
    """4 members on 3 levels: BCa's interval of their IQM is NaN (scipy's own, on another way of
    writing the statistic), so the interval is the percentile bootstrap's, and says so."""
    members = [np.array(m) for m in ([10.0, 10, 0], [0.0, 10, 0], [10.0, 0, 10], [0.0, 10, 10])]
    reference = lambda *ms, axis: sps.trim_mean(np.stack([m.mean(axis) for m in ms]), 0.25, axis=0)
    kw = dict(paired=True, vectorized=True, batch=500)
    with pytest.warns(RuntimeWarning):
        assert np.isnan(sps.bootstrap(members, reference, method="BCa", rng=np.random.default_rng(0), **kw)
                        .confidence_interval.low)
    ref = sps.bootstrap(members, reference, method="percentile", rng=np.random.default_rng(0), **kw).confidence_interval
    r = paired_bootstrap_ci(members, iqm_of_means, seed=0, unit="levels")
    assert r.method == "percentile, levels" and r.ci == pytest.approx([ref.low, ref.high])


@pytest.mark.parametrize("members", [1, 2, 3, 4, 5, 7, 10])
def test_iqm_of_means_is_scipys_trimmed_mean(members: int) -> None:
    x = np.random.default_rng(members).normal(size=(members, 30))
    assert float(iqm_of_means(*x)) == pytest.approx(float(sps.trim_mean(x.mean(1), 0.25)))
    assert float(iqm_of_means(*x)) == pytest.approx(float(rly_metrics.aggregate_iqm(x.mean(1)[:, None])))


# ---- one evaluation's rows -------------------------------------------------------------------------


@pytest.mark.parametrize("wins", [48, 0, 8])
def test_success_bonus_returns_get_the_exact_binomial_interval(wins: int) -> None:
    """Maze's return is 10 x success: 48 of 48 successes is 10.00 [9.26, 10.00], not a zero-width
    interval; 0 of 48 is [0, 0.74]; and the success rate's interval is the same, / 10."""
    won = np.arange(48) < wins
    r = summarize(10.0 * won, won, np.full(48, 100), cfg_of("maze"))
    ref = clopper_pearson_by_beta(wins, 48)
    assert r["return_ci"] == pytest.approx([10 * v for v in ref], abs=1e-9) and r["return_ci_method"] == EXACT
    assert r["success_ci"] == pytest.approx(ref, abs=1e-9) and r["success_ci_method"] == EXACT
    assert r["return"] == 10 * wins / 48


def test_other_returns_get_bca_and_constants_no_interval() -> None:
    """bigfish's returns are not a success bonus: BCa over episodes (scipy's), while the success rate
    is still exact binomial; a return that never varies has no interval at all."""
    cfg = cfg_of("bigfish")
    x = np.random.default_rng(0).integers(0, 30, 40).astype(np.float32)
    won = x > 20
    r = summarize(x, won, np.full(40, 100), cfg)
    assert r["return_ci"] == list(bca(x.astype(np.float64), SEED)) and r["return_ci_method"] == "BCa, episodes"
    assert r["success_ci"] == pytest.approx(clopper_pearson_by_beta(int(won.sum()), 40), abs=1e-9)
    flat = summarize(np.full(40, 3.0), np.zeros(40, bool), np.full(40, 100), cfg)
    assert flat["return_ci"] is None and flat["return_ci_method"] == NO_SPREAD
    assert flat["success_ci"] == pytest.approx(clopper_pearson_by_beta(0, 40), abs=1e-9)


def test_members_rows_resample_levels() -> None:
    """3 members on the same 48 levels: the IQM (their mean) and the pooled mean get scipy's BCa of
    the per-level sums over members (integers) / 3, one draw of levels for every member. That
    interval is wider than a bootstrap over the 3 member means, which leaves the levels' noise out."""
    returns = maze_like(agents=3, seed=4)
    stats = episode_stats(returns, [r > 0 for r in returns])
    cfg = cfg_of("maze")
    per_level = np.sum(returns, axis=0, dtype=np.float64)
    low, high = bca(per_level, SEED)
    row = iqm_summary(stats, cfg)
    assert row["return_ci"] == [low / 3, high / 3] and row["return_ci_method"] == "BCa, levels"
    assert row["return"] == pytest.approx(np.mean([r.mean() for r in returns])) and row["members"] == 3
    pooled = summarize_stats(stats, cfg)
    assert pooled["return_ci"] == row["return_ci"] and pooled["episodes"] == 144 and pooled["levels"] == 48
    across_members = sps.bootstrap((np.array([r.mean() for r in returns], np.float64),), np.mean, method="BCa",
                                   rng=np.random.default_rng(SEED)).confidence_interval
    assert high / 3 - low / 3 > across_members.high - across_members.low


def test_one_member_iqm_row_is_that_members_row() -> None:
    """With one member the IQM is that member: its interval too (not a zero-width one)."""
    (x,) = maze_like(agents=1, seed=5)
    stats = episode_stats([x], [x > 0])
    cfg = cfg_of("maze")
    member, row = summarize_stats(stats, cfg, 0), iqm_summary(stats, cfg)
    assert row["return_ci"] == member["return_ci"] and row["return_ci"][1] > row["return_ci"][0]
    assert row["success_ci"] == member["success_ci"] and row["return"] == member["return"]


def test_members_that_all_succeed_everywhere_get_an_exact_interval() -> None:
    won = np.ones(48, bool)
    stats = episode_stats([10.0 * won] * 3, [won] * 3)
    row = iqm_summary(stats, cfg_of("maze"))
    assert row["return_ci"] == pytest.approx([10 * v for v in clopper_pearson_by_beta(48, 48)], abs=1e-9)
    assert row["return_ci_method"] == EXACT
    assert iqm_summary(episode_stats([np.full(48, 2.0)] * 3, [~won] * 3), cfg_of("bigfish"))["return_ci"] is None


# ---- runs as the unit: rliable ---------------------------------------------------------------------


SCORES = np.array([[0.31, 0.62, 0.12], [0.45, 0.58, 0.20], [0.28, 0.71, 0.05], [0.52, 0.66, 0.18],
                   [0.40, 0.49, 0.25]])  # 5 runs x 3 games


def rliable_estimates(score_dict: dict, func, reps: int, seed: int):
    np.random.seed(seed)  # rliable's stratified bootstraps draw from numpy's global generator
    return rly.get_interval_estimates(score_dict, func, reps=reps)


def test_run_aggregates_are_rliables() -> None:
    state = np.random.get_state()[1].copy()
    ours = run_aggregates(SCORES, reps=2000, seed=7)
    assert (np.random.get_state()[1] == state).all()  # the caller's global generator is left alone
    for name, metric in [("iqm", rly_metrics.aggregate_iqm), ("mean", rly_metrics.aggregate_mean),
                         ("median", rly_metrics.aggregate_median)]:
        points, cis = rliable_estimates({"x": SCORES}, lambda s, m=metric: np.array([m(s)]), 2000, 7)
        assert ours[name][0] == pytest.approx(float(points["x"][0]))
        assert ours[name][1] == pytest.approx([float(cis["x"][0, 0]), float(cis["x"][1, 0])])


def test_rliable_median_is_over_games_of_their_means() -> None:
    """rliable's median: the median over games of each game's mean score, not of all runs pooled;
    with one game it is the mean."""
    scores = np.array([[0.0, 5.0, 9.0], [1.0, 6.0, 9.5], [8.0, 7.0, 10.0]])
    assert run_aggregates(scores, reps=100)["median"][0] == pytest.approx(6.0)  # game means 3, 6, 9.5
    assert np.median(scores) == 7.0
    one_game = np.array([[1.0], [2.0], [9.0]])
    assert run_aggregates(one_game, reps=100)["median"][0] == pytest.approx(4.0)


def test_one_run_or_no_spread_has_no_interval() -> None:
    """One run: nothing to resample. Runs that all score alike, or X's runs all above Y's: every
    resample gives the same value, and a zero-width interval would read as certainty."""
    assert all(ci is None for _, ci in run_aggregates(np.full((4, 2), 0.5), reps=100).values())
    assert probability_of_improvement(SCORES[:3] + 1, SCORES[:3], reps=100) == (1.0, None)
    one = SCORES[:1]
    assert all(ci is None for _, ci in run_aggregates(one).values())
    assert probability_of_improvement(one, SCORES[1:])[1] is None
    fraction, band = performance_profile(one, np.array([0.0, 0.3]))
    assert band is None and fraction.tolist() == [1.0, 2 / 3]


def test_one_game_is_an_ordinary_percentile_bootstrap() -> None:
    """rliable's stratified bootstrap of one game against scipy's percentile bootstrap, within
    resampling error."""
    x = np.random.default_rng(4).normal(0.5, 0.2, 10)
    point, (low, high) = run_aggregates(x[:, None], reps=5_000, seed=1)["mean"]
    ref = sps.bootstrap((x,), np.mean, method="percentile", rng=np.random.default_rng(2), n_resamples=5_000,
                        vectorized=True).confidence_interval
    assert point == pytest.approx(x.mean())
    assert low == pytest.approx(ref.low, abs=0.01) and high == pytest.approx(ref.high, abs=0.01)  # ~3 SE


def test_probability_of_improvement_is_rliables() -> None:
    x, y = SCORES[:, :2], SCORES[:4, :2] * 0.9 + 0.02
    p, ci = probability_of_improvement(x, y, reps=200, seed=2)
    points, cis = rliable_estimates({"p": [x, y]}, rly_metrics.probability_of_improvement, 200, 2)
    assert p == pytest.approx(float(points["p"])) and ci == pytest.approx([float(cis["p"][0]), float(cis["p"][1])])
    # by hand, one game: pairs 1>0, 2>0, 3>0, 3>2 win, 2=2 counts one half -> 4.5 / 9
    p, ci = probability_of_improvement(np.array([[1.0], [2.0], [3.0]]), np.array([[0.0], [2.0], [4.0]]), reps=200)
    assert p == pytest.approx(0.5) and 0.0 <= ci[0] <= p <= ci[1] <= 1.0
    with pytest.raises(ValueError, match="same games"):
        probability_of_improvement(np.ones((2, 1)), np.ones((2, 2)))


def test_vectorised_metrics_are_rliables() -> None:
    """The probability of improvement and score distribution the bootstraps call are rliable's
    ``probability_of_improvement`` (scipy's Mann-Whitney U per game) and ``score_distributions``."""
    rng = np.random.default_rng(3)
    for runs_x, runs_y, games in [(5, 3, 4), (2, 2, 1), (4, 6, 16)]:
        x, y = rng.integers(0, 4, (runs_x, games)).astype(float), rng.integers(0, 4, (runs_y, games)).astype(float)
        assert improvement_probability(x, y) == pytest.approx(float(rly_metrics.probability_of_improvement(x, y)))
        taus = np.linspace(-1, 4, 11)
        np.testing.assert_allclose(score_distribution(x, taus), rly.score_distributions(x, taus))
    assert improvement_probability(x, x) == 0.5


def test_performance_profile_is_rliables() -> None:
    taus = np.linspace(0.0, 0.8, 9)
    fraction, band = performance_profile(SCORES, taus, reps=300, seed=5)
    np.random.seed(5)
    profiles, bands = rly.create_performance_profile({"x": SCORES}, taus, reps=300)
    np.testing.assert_allclose(fraction, profiles["x"])
    np.testing.assert_allclose(band, bands["x"])
    np.testing.assert_allclose(fraction, [(SCORES > t).mean() for t in taus])  # by definition
