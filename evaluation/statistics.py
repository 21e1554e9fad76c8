"""Statistics of evaluation results: the confidence intervals of one evaluation's numbers, paired
differences between its modes, and aggregates over independent runs (``rliable``).

Within one evaluation (eval.py's table) the unit is the episode, and every mode plays the same
levels in the same env slots (``evaluation/episodes.py``). Each interval says how it was computed
(its ``method``):

- ``exact binomial``: one agent's success rate, and the mean return of a game whose only reward is
  a success bonus (``envs/games.py:Game.success_reward``: maze, coinrun, heist, jumper, leaper,
  ninja; the return is that bonus times the success indicator), are binomial proportions: the
  Clopper-Pearson interval (``scipy.stats.binomtest``), valid at 0 of n and n of n too, where a
  bootstrap has nothing to resample.
- ``BCa, episodes``: any other mean return of one agent, and ExpGen's difference to another mode,
  by ``scipy.stats.bootstrap`` (BCa; ``percentile`` where BCa is undefined). A difference resamples
  episode indices once for both sides (paired).
- ``BCa, levels``: aggregates over the members (their pooled mean, the IQM of their means) resample
  the levels, one draw of episode indices for every member, since every member played the same
  levels; the members are this run's, held fixed (their seed-to-seed spread is what runs measure).
- ``none: no spread``: a sample that does not vary and has no binomial reading gets no interval
  (``ci`` None), never a zero-width one.

The bootstrap statistics are sums of the episode values followed by one division, so values that
are equal in exact arithmetic are equal floats: with returns of 0 or 10 many resamples tie with
the point estimate, BCa's bias correction counts those ties (scipy's contract), and a statistic
such as ``mean(a) - mean(b)``, which rounds twice, would break them and move the interval.

Across runs (seeds) the unit is the run, and the statistics are ``rliable``'s (Agarwal et al.,
"Deep Reinforcement Learning at the Edge of the Statistical Precipice", NeurIPS 2021): IQM, mean and
median with stratified-bootstrap percentile CIs, the probability of improvement and performance
profiles (``run_aggregates``, ``probability_of_improvement``, ``performance_profile``). What
rliable lacks, the paired per-episode differences and exact binomial intervals, is above.
"""
from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Callable, NamedTuple

import numpy as np
from rliable import library as rly
from rliable import metrics as rly_metrics
from scipy import stats as sps

from core.config import Config
from envs.games import get_game
from evaluation.episodes import EpisodeStats

CONFIDENCE = 0.95
IQM_TRIM = 0.25  # scipy.stats.trim_mean proportion (rliable's aggregate_iqm): the interquartile mean
BOOTSTRAP_BATCH = 500  # resamples scipy holds at once: (batch, episodes) per sample, bounded memory

EXACT = "exact binomial"
NO_SPREAD = "none: no spread"


class Interval(NamedTuple):
    """A 95% confidence interval, ``ci`` = [low, high], or None where the data cannot give one;
    ``method`` says how it was computed (one of the module docstring's list)."""

    ci: list[float] | None
    method: str


def iqm(x: np.ndarray, axis: int | None = -1) -> np.ndarray:
    """Interquartile mean (``scipy.stats.trim_mean`` cutting 25% at each end, as rliable's
    ``aggregate_iqm``); fewer than 4 values trim nothing (the cut is ``int(0.25 * n)``)."""
    return sps.trim_mean(x, IQM_TRIM, axis=axis)


def clopper_pearson(successes: int, trials: int) -> list[float]:
    """Exact (Clopper-Pearson) 95% interval of a binomial proportion, ``successes`` of ``trials``:
    ``scipy.stats.binomtest(...).proportion_ci(method="exact")``. Raises ValueError for trials < 1."""
    ci = sps.binomtest(int(successes), int(trials)).proportion_ci(CONFIDENCE, method="exact")
    return [float(ci.low), float(ci.high)]


def paired_bootstrap_ci(samples: Sequence[np.ndarray], statistic: Callable[..., Any], seed: int = 0,
                        unit: str = "episodes") -> Interval:
    """95% bootstrap interval of ``statistic(*samples, axis=-1)``, resampling the episode indices
    **paired**: one draw applies to every sample (``scipy.stats.bootstrap(paired=True)``, BCa,
    percentile where BCa is undefined). ``unit`` names what an index stands for, in ``method``.

    ``samples``: arrays of shape (n,), entry i of each from episode i (the same level and env slot
    in every mode). ``statistic`` must be vectorised, arrays (..., n) in, (...) out, and give equal
    floats for equal values (see the module docstring). A statistic that no resample moves, or
    fewer than 2 episodes, gives no interval. Raises ValueError when the samples differ in length
    or hold a value that is not finite.
    """
    xs = tuple(np.asarray(x, dtype=np.float64) for x in samples)
    if len({x.shape for x in xs}) != 1 or xs[0].ndim != 1:
        raise ValueError(f"paired samples must be 1-d and of one length, got shapes {[x.shape for x in xs]}")
    if not all(np.isfinite(x).all() for x in xs):
        raise ValueError("paired samples must be finite (a NaN or infinite episode value)")
    if xs[0].size < 2:
        return Interval(None, NO_SPREAD)

    def run(method: str) -> Any:
        return sps.bootstrap(xs, statistic, paired=True, vectorized=True, confidence_level=CONFIDENCE,
                             method=method, rng=np.random.default_rng(seed), batch=BOOTSTRAP_BATCH)

    with warnings.catch_warnings():
        # a statistic no resample moves: scipy warns and BCa is NaN; it is reported as no spread.
        # Jackknife values all equal make BCa's acceleration 0/0 (NaN too): the percentile method then
        warnings.simplefilter("ignore", sps.DegenerateDataWarning)
        warnings.filterwarnings("ignore", "invalid value encountered", RuntimeWarning)
        res = run("BCa")
    if np.ptp(res.bootstrap_distribution) == 0:
        return Interval(None, NO_SPREAD)
    method = "BCa"
    if not (np.isfinite(res.confidence_interval.low) and np.isfinite(res.confidence_interval.high)):
        res, method = run("percentile"), "percentile"  # same seed: the same resamples
    return Interval([float(res.confidence_interval.low), float(res.confidence_interval.high)], f"{method}, {unit}")


# ---- the rows of one evaluation ------------------------------------------------------------------


def agent_interval(values: np.ndarray, successes: np.ndarray, success_reward: float | None, seed: int = 0
                   ) -> Interval:
    """95% interval of the mean of one agent's episodes.

    ``values`` (n,): per-episode returns (or successes as 0/1); ``successes`` (n,) bool;
    ``success_reward``: the value of one success when ``values`` is that times the success indicator
    (the game's ``success_reward``; 1.0 for the success rate), else None. Exact binomial when
    ``values`` equals ``success_reward * successes`` episode by episode, else BCa over episodes,
    or no interval for a sample without spread.
    """
    x = np.asarray(values, dtype=np.float64)
    won = np.asarray(successes, dtype=bool)
    if success_reward is not None and np.array_equal(x, success_reward * won):
        low, high = clopper_pearson(int(won.sum()), x.size)
        return Interval([success_reward * low, success_reward * high], EXACT)
    if x.size < 2 or np.ptp(x) == 0:
        return Interval(None, NO_SPREAD)
    return paired_bootstrap_ci([x], np.mean, seed)


def pooled_mean(*members: np.ndarray, axis: int = -1) -> np.ndarray:
    """Mean over every member's episodes: each member's sum, summed, one division (vectorised)."""
    return np.sum([np.sum(m, axis=axis) for m in members], axis=0) / (len(members) * members[0].shape[axis])


def _kept_sums(members: Sequence[np.ndarray], axis: int) -> np.ndarray:
    """The members' sums over episodes that the IQM keeps: sorted, ``int(0.25 * M)`` cut at each end
    (scipy.stats.trim_mean's cut). (kept, ...)."""
    sums = np.sort(np.stack([np.sum(m, axis=axis) for m in members]), axis=0)
    cut = int(IQM_TRIM * len(members))
    return sums[cut:len(members) - cut]


def iqm_of_means(*members: np.ndarray, axis: int = -1) -> np.ndarray:
    """IQM over members of each member's mean over episodes (vectorised): ``iqm`` of the means,
    computed from the kept members' sums with one division."""
    kept = _kept_sums(members, axis)
    return np.sum(kept, axis=0) / (kept.shape[0] * members[0].shape[axis])


def members_interval(values: np.ndarray, successes: np.ndarray, success_reward: float | None,
                     statistic: Callable[..., np.ndarray], seed: int = 0) -> Interval:
    """95% interval of ``statistic`` (``pooled_mean`` or ``iqm_of_means``) of the members' episodes.

    ``values``, ``successes``: (members, n), row m member m's episodes, column i the same level for
    every member. One member: its own ``agent_interval``. Several: BCa over levels (episode indices
    drawn once for all members). Every member and level alike: exact binomial over the n levels where
    the values are ``success_reward`` times the successes (all succeeded, or none did), else none.
    """
    x = np.asarray(values, dtype=np.float64)
    won = np.asarray(successes, dtype=bool)
    if x.shape[0] == 1:
        return agent_interval(x[0], won[0], success_reward, seed)
    if np.ptp(x) == 0:
        if success_reward is not None and np.array_equal(x, success_reward * won):
            low, high = clopper_pearson(x.shape[1] if won.all() else 0, x.shape[1])
            return Interval([success_reward * low, success_reward * high], EXACT)
        return Interval(None, NO_SPREAD)
    return paired_bootstrap_ci(list(x), statistic, seed, unit="levels")


def _with_intervals(ret: Interval, success: Interval) -> dict[str, Any]:
    return {"return_ci": ret.ci, "return_ci_method": ret.method,
            "success_ci": success.ci, "success_ci_method": success.method}


def summarize(returns: np.ndarray, successes: np.ndarray, lengths: np.ndarray, cfg: Config
              ) -> dict[str, Any]:
    """One agent's episodes (n,): mean return and success rate with their 95% intervals
    (``agent_interval``), return spread, normalised score, mean length."""
    game = get_game(cfg.env.game)
    x = np.asarray(returns, dtype=np.float64)
    won = np.asarray(successes, dtype=bool)
    mean = float(np.mean(x))
    return {
        "return": mean,
        "return_std": float(np.std(x)),
        "success": float(np.mean(won)),
        **_with_intervals(agent_interval(x, won, game.success_reward, cfg.eval.seed),
                          agent_interval(won.astype(np.float64), won, 1.0, cfg.eval.seed)),
        "normalised": game.normalised_score(mean, cfg.env.distribution_mode),
        "episodes": int(x.size),
        "length": float(np.mean(lengths)),
    }


def summarize_stats(stats: EpisodeStats, cfg: Config, group: int | None = None) -> dict[str, Any]:
    """``summarize`` of one group (agent); with ``group`` None, of every group's episodes pooled, its
    intervals over levels (``members_interval`` with ``pooled_mean``): the groups played the same
    levels, so their G x n episodes are n independent levels, not G x n independent episodes."""
    if group is not None:
        return summarize(stats.returns[group], stats.successes[group], stats.lengths[group], cfg)
    x = stats.returns
    return {**_over_levels(stats, cfg, pooled_mean), "return_std": float(np.std(x.astype(np.float64))), "episodes": int(x.size),
            "levels": int(x.shape[1]), "length": float(np.mean(stats.lengths))}


def iqm_summary(stats: EpisodeStats, cfg: Config) -> dict[str, Any]:
    """IQM over the members (groups of ``stats``) of their mean return and success rate, with 95%
    intervals over levels, the members held fixed (``members_interval`` with ``iqm_of_means``;
    one member: its own interval). Fewer than 4 members: the IQM trims nothing, it is their mean."""
    return {**_over_levels(stats, cfg, iqm_of_means), "members": int(stats.returns.shape[0])}


def _over_levels(stats: EpisodeStats, cfg: Config, aggregate: Callable[..., Any]) -> dict[str, Any]:
    """Return and success rate of ``aggregate`` over the members' per-level episodes (G, n), their
    95% intervals over levels with the members fixed (``members_interval``) and the normalised score."""
    game = get_game(cfg.env.game)
    x = stats.returns.astype(np.float64)
    won = stats.successes.astype(bool)
    value = float(aggregate(*x))
    seed = cfg.eval.seed
    return {
        "return": value,
        "success": float(aggregate(*won.astype(np.float64))),
        **_with_intervals(members_interval(x, won, game.success_reward, aggregate, seed),
                          members_interval(won.astype(np.float64), won, 1.0, aggregate, seed)),
        "normalised": game.normalised_score(value, cfg.env.distribution_mode),
    }


# ---- paired differences within one evaluation ---------------------------------------------------


def mean_difference(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    """mean(a - b) along ``axis`` (vectorised): the episode-wise differences summed, one division."""
    return np.mean(a - b, axis=axis)


def mean_minus_iqm(a: np.ndarray, *members: np.ndarray, axis: int = -1) -> np.ndarray:
    """mean(a) - IQM over members of each member's mean (vectorised): ExpGen against its members'
    IQM, as (k sum(a) - sum of the k kept members' sums) / (k n), one division."""
    kept = _kept_sums(members, axis)
    k = kept.shape[0]
    return (k * np.sum(a, axis=axis) - np.sum(kept, axis=0)) / (k * a.shape[axis])


def paired_difference(a: np.ndarray, others: Sequence[np.ndarray], seed: int = 0) -> dict[str, Any]:
    """``a``'s mean minus the other side's, with its paired 95% bootstrap interval over episodes.

    ``a`` (n,); ``others``: one array (n,) (another mode), or several (the members: then the other
    side is the IQM of the members' means). Returns ``{"difference", "ci": [low, high] or None,
    "method", "episodes"}``. Raises ValueError when the arrays differ in length.
    """
    stat = mean_difference if len(others) == 1 else mean_minus_iqm
    samples = [np.asarray(x, np.float64) for x in (a, *others)]
    interval = paired_bootstrap_ci(samples, stat, seed)
    return {"difference": float(stat(*samples)), "ci": interval.ci, "method": interval.method,
            "episodes": int(samples[0].size)}


def unpaired_normal_ci(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """95% normal-approximation CI of mean(a) - mean(b) treating a and b as independent samples:
    what docs/results.md used before evaluations were paired (kept for comparison and tests)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    diff = a.mean() - b.mean()
    half = sps.norm.ppf(0.5 + CONFIDENCE / 2) * np.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size)
    return float(diff - half), float(diff + half)


# ---- runs as the unit: rliable --------------------------------------------------------------------

RUN_REPS = 5_000  # stratified-bootstrap resamples of runs for aggregates and P(X > Y)
PROFILE_REPS = 2_000  # for performance-profile bands (rliable's default)
MIN_RUNS = 2  # runs of each game for any interval: a bootstrap over one run has no spread
RECOMMENDED_RUNS = 5  # below this, intervals cover well under 95% (compare.py warns: docs/evaluation.md)
AGGREGATES = ("iqm", "mean", "median")


@contextmanager
def _seeded_numpy_global(seed: int) -> Iterator[None]:
    """rliable's stratified bootstraps draw their indices from numpy's global generator
    (``np.random.choice`` in ``update_indices``) whatever ``random_state`` they are given: seed it
    for the call, and give the caller's state back after."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


@contextmanager
def _rliable_quiet() -> Iterator[None]:
    """rliable's ``get_interval_estimates`` logs "Calculating estimates for <key> ..." at INFO (absl
    logging, which hands it to Python's root logger): under eval.py's and sweep.py's INFO logging
    that line would land between the lines of every table. Raise absl's logger to WARNING for the
    call, then give its level back."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


def _run_matrix(scores: np.ndarray) -> np.ndarray:
    x = np.asarray(scores, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"run scores must be a (runs, games) matrix with at least one of each, got shape {x.shape}")
    return x


def _spread(low: float, high: float) -> list[float] | None:
    """[low, high], or None where every resample gave the same value: a zero-width interval would
    read as certainty the runs do not give (2 runs of X above 2 of Y: P = 1 in every resample)."""
    return None if low == high else [float(low), float(high)]


def _aggregates(scores: np.ndarray) -> np.ndarray:
    """rliable's aggregate IQM (over every run of every game), mean and median (of the games' mean
    scores) of a (runs, games) matrix: (3,) in ``AGGREGATES`` order."""
    return np.array([rly_metrics.aggregate_iqm(scores), rly_metrics.aggregate_mean(scores),
                     rly_metrics.aggregate_median(scores)])


def run_aggregates(scores: np.ndarray, reps: int = RUN_REPS, seed: int = 0
                   ) -> dict[str, tuple[float, list[float] | None]]:
    """IQM, mean and median of run scores with 95% stratified-bootstrap percentile intervals: each
    resample draws, within each game, as many runs as it has (``rliable.library.
    get_interval_estimates``; ``reps`` resamples, seeded). rliable's median is the median over games
    of each game's mean: with one game it is the mean.

    ``scores``: (runs, games). Returns {name: (point, [low, high])} for ``AGGREGATES``; the
    interval is None with fewer than ``MIN_RUNS`` runs, or where no resample differs (``_spread``).
    Raises ValueError for another shape.
    """
    x = _run_matrix(scores)
    if x.shape[0] < MIN_RUNS:
        return {name: (float(v), None) for name, v in zip(AGGREGATES, _aggregates(x))}
    with _seeded_numpy_global(seed), _rliable_quiet():
        points, cis = rly.get_interval_estimates({"x": x}, _aggregates, reps=reps, confidence_interval_size=CONFIDENCE)
    return {name: (float(points["x"][i]), _spread(cis["x"][0, i], cis["x"][1, i])) for i, name in enumerate(AGGREGATES)}


def improvement_probability(x: np.ndarray, y: np.ndarray) -> float:
    """``rliable.metrics.probability_of_improvement`` vectorised: per game, the Mann-Whitney U of X's
    runs over Y's (pairs where X scores above, ties one half) over the number of pairs, averaged over
    games. rliable's calls scipy's ``mannwhitneyu`` once per game and resample, milliseconds each:
    minutes for thousands of resamples of several games. Equal to it (tests/test_statistics.py).

    ``x`` (runs of X, games), ``y`` (runs of Y, games)."""
    above = x[:, None, :] > y[None, :, :]
    ties = x[:, None, :] == y[None, :, :]
    return float(np.mean(np.mean(above + 0.5 * ties, axis=(0, 1))))


def probability_of_improvement(x: np.ndarray, y: np.ndarray, reps: int = RUN_REPS, seed: int = 0
                               ) -> tuple[float, list[float] | None]:
    """P(X > Y): the probability that a run of X scores above a run of Y on the same game (ties
    count one half), averaged over games (rliable's ``probability_of_improvement``, as
    ``improvement_probability``), with the 95% interval of a stratified bootstrap resampling X's and
    Y's runs independently within each game (rliable's ``get_interval_estimates`` with its
    ``StratifiedIndependentBootstrap``; ``reps`` resamples, seeded).

    ``x`` (runs of X, games), ``y`` (runs of Y, games), games in the same order. Returns
    (point, [low, high]), the interval None when either has fewer than ``MIN_RUNS`` runs or no
    resample differs (every run of X above every run of Y: ``_spread``). Raises ValueError when the
    games differ in number.
    """
    x, y = _run_matrix(x), _run_matrix(y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"X and Y need the same games, got {x.shape[1]} and {y.shape[1]}")
    if min(x.shape[0], y.shape[0]) < MIN_RUNS:
        return improvement_probability(x, y), None
    with _seeded_numpy_global(seed), _rliable_quiet():
        points, cis = rly.get_interval_estimates({"p": [x, y]}, improvement_probability, reps=reps,
                                                 confidence_interval_size=CONFIDENCE)
    return float(points["p"]), _spread(cis["p"][0], cis["p"][1])


def score_distribution(scores: np.ndarray, taus: np.ndarray) -> np.ndarray:
    """rliable's ``score_distributions`` for all thresholds at once: the fraction of the (runs,
    games) scores above each tau, (T,). rliable's loops over the taus in Python, per resample."""
    return np.mean(scores[..., None] > taus, axis=(0, 1))


def performance_profile(scores: np.ndarray, taus: np.ndarray, reps: int = PROFILE_REPS, seed: int = 0
                        ) -> tuple[np.ndarray, np.ndarray | None]:
    """Run-score distribution: for each threshold tau, the fraction of runs (of every game) scoring
    above tau, with its 95% stratified-bootstrap band (``rliable.library.create_performance_profile``;
    its score distribution computed for all taus at once, ``score_distribution``; ``reps``
    resamples, seeded).

    ``scores`` (runs, games), ``taus`` (T,). Returns (fraction (T,), band (2, T): low and high), the
    band None with fewer than ``MIN_RUNS`` runs.
    """
    x = _run_matrix(scores)
    taus = np.asarray(taus, dtype=np.float64)
    if x.shape[0] < MIN_RUNS:
        return score_distribution(x, taus), None
    with _seeded_numpy_global(seed):
        profiles, bands = rly.create_performance_profile({"x": x}, taus, custom_profile_func=score_distribution,
                                                         reps=reps, confidence_interval_size=CONFIDENCE)
    return np.asarray(profiles["x"], dtype=np.float64), np.asarray(bands["x"], dtype=np.float64)
