"""Statistics of evaluation results: bootstrap confidence intervals, IQM, per-agent summaries,
paired differences between modes, and aggregates over independent runs.

- Within one evaluation, the unit is the episode: every mode plays the same levels in the same env
  slots (``evaluation/episodes.py``), so two modes are compared **paired**, episode i against
  episode i (``paired_bootstrap_ci``): the level-to-level spread that both share cancels.
- Across runs (seeds) of a config, the unit is the run (Agarwal et al., "Deep RL at the Edge of the
  Statistical Precipice", NeurIPS 2021, the practice of the ``rliable`` library): a run's score is
  its mean over episodes, and the aggregates (IQM, mean, median), the probability of improvement
  and performance profiles get **stratified bootstrap** CIs, runs resampled within each game
  (``stratified_bootstrap``). ``rliable`` itself is not used: it needs ``arch`` < 8, whose 7.x fails
  to import beside pandas 3 (installed here); its definitions are re-implemented below on numpy.

scipy's tested implementations (``scipy.stats.bootstrap``, ``trim_mean``) rather than our own where
they apply.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Callable

import numpy as np
from scipy import stats as sps

from core.config import Config
from envs.games import get_game
from evaluation.episodes import EpisodeStats

CONFIDENCE = 0.95
IQM_TRIM = 0.25  # scipy.stats.trim_mean proportion: the interquartile mean

def iqm(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Interquartile mean (``scipy.stats.trim_mean`` cutting 25% at each end)."""
    return sps.trim_mean(x, IQM_TRIM, axis=axis)


def bootstrap_ci(values: np.ndarray, statistic: Callable[..., Any] = np.mean, seed: int = 0
                 ) -> tuple[float, float]:
    """95% bootstrap CI (``scipy.stats.bootstrap``, BCa, seeded) of ``statistic(values)``.

    Constant or single-value samples have no spread to resample: the CI is the point itself. BCa can
    return NaN on nearly degenerate samples; the percentile method is the fallback then.
    """
    x = np.asarray(values, dtype=np.float64)
    point = float(statistic(x, axis=-1))
    if x.size < 2 or np.ptp(x) == 0:
        return point, point
    for method in ("BCa", "percentile"):
        res = sps.bootstrap((x,), statistic, confidence_level=CONFIDENCE, method=method,
                            rng=np.random.default_rng(seed), vectorized=True)
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
        if np.isfinite(low) and np.isfinite(high):
            return low, high
    return point, point


def summarize(returns: np.ndarray, successes: np.ndarray, lengths: np.ndarray, cfg: Config
              ) -> dict[str, Any]:
    """Mean return with its bootstrap CI over episodes, success rate, normalised score, length."""
    game = get_game(cfg.env.game)
    mean = float(np.mean(returns))
    low, high = bootstrap_ci(returns, np.mean, cfg.eval.seed)
    return {
        "return": mean,
        "return_ci": [low, high],
        "return_std": float(np.std(returns)),
        "success": float(np.mean(successes)),
        "normalised": game.normalised_score(mean, cfg.env.distribution_mode),
        "episodes": int(np.size(returns)),
        "length": float(np.mean(lengths)),
    }


def summarize_stats(stats: EpisodeStats, cfg: Config, group: int | None = None) -> dict[str, Any]:
    """``summarize`` of one group, or of all groups pooled when ``group`` is None."""
    pick = (lambda a: a.ravel()) if group is None else (lambda a: a[group])
    return summarize(pick(stats.returns), pick(stats.successes), pick(stats.lengths), cfg)


def iqm_summary(members: list[dict[str, Any]], cfg: Config) -> dict[str, Any]:
    """IQM across members of their mean returns, with a bootstrap CI across members."""
    returns = np.array([m["return"] for m in members])
    value = float(iqm(returns))
    low, high = bootstrap_ci(returns, iqm, cfg.eval.seed)
    return {
        "return": value,
        "return_ci": [low, high],
        "success": float(iqm(np.array([m["success"] for m in members]))),
        "normalised": get_game(cfg.env.game).normalised_score(value, cfg.env.distribution_mode),
        "members": len(members),
    }


# ---- paired differences within one evaluation ---------------------------------------------------

BOOTSTRAP_BATCH = 500  # resamples scipy holds at once: (batch, episodes) per sample, bounded memory


def paired_bootstrap_ci(samples: Sequence[np.ndarray], statistic: Callable[..., Any], seed: int = 0
                        ) -> tuple[float, float]:
    """95% bootstrap CI of ``statistic(*samples, axis=-1)``, resampling episodes **paired**: one draw
    of episode indices applies to every sample (``scipy.stats.bootstrap(paired=True)``; BCa, with
    the percentile method as fallback).

    ``samples``: arrays of shape (n,), entry i of each from episode i (the same level and env slot in
    every mode). ``statistic`` must be vectorised: arrays (..., n) in, (...) out. A statistic that
    does not vary (constant samples, a constant difference) has the point as its interval (up to
    rounding).

    Raises ValueError when the samples differ in length.
    """
    xs = tuple(np.asarray(x, dtype=np.float64) for x in samples)
    if len({x.shape for x in xs}) != 1 or xs[0].ndim != 1:
        raise ValueError(f"paired samples must be 1-d and of one length, got shapes {[x.shape for x in xs]}")
    point = float(statistic(*xs, axis=-1))
    if len(xs[0]) < 2 or all(np.ptp(x) == 0 for x in xs):
        return point, point
    with warnings.catch_warnings():
        # scipy warns on a degenerate bootstrap distribution (a constant difference); BCa is NaN
        # then and the percentile interval is the point itself
        warnings.simplefilter("ignore")
        for method in ("BCa", "percentile"):
            res = sps.bootstrap(xs, statistic, paired=True, vectorized=True, confidence_level=CONFIDENCE,
                                method=method, rng=np.random.default_rng(seed), batch=BOOTSTRAP_BATCH)
            low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
            if np.isfinite(low) and np.isfinite(high):
                return low, high
    return point, point


def mean_difference(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    """mean(a) - mean(b) along ``axis`` (vectorised, for ``paired_bootstrap_ci``)."""
    return np.mean(a, axis=axis) - np.mean(b, axis=axis)


def mean_minus_iqm(a: np.ndarray, *members: np.ndarray, axis: int = -1) -> np.ndarray:
    """mean(a) - IQM over members of each member's mean (vectorised): ExpGen against its members' IQM."""
    means = np.stack([np.mean(m, axis=axis) for m in members])
    return np.mean(a, axis=axis) - iqm(means, axis=0)


def paired_difference(a: np.ndarray, others: Sequence[np.ndarray], seed: int = 0) -> dict[str, Any]:
    """``a``'s mean minus the other side's, with its paired 95% bootstrap CI over episodes.

    ``a`` (n,); ``others``: one array (n,) (another mode), or several (the members: then the other
    side is the IQM of the members' means). Returns ``{"difference", "ci": [low, high], "episodes"}``.
    """
    stat = mean_difference if len(others) == 1 else mean_minus_iqm
    value = float(stat(np.asarray(a, np.float64), *(np.asarray(o, np.float64) for o in others)))
    low, high = paired_bootstrap_ci([a, *others], stat, seed)
    return {"difference": value, "ci": [low, high], "episodes": int(np.size(a))}


def unpaired_normal_ci(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """95% normal-approximation CI of mean(a) - mean(b) treating a and b as independent samples:
    what docs/results.md used before evaluations were paired (kept for comparison and tests)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    diff = a.mean() - b.mean()
    half = sps.norm.ppf(0.5 + CONFIDENCE / 2) * np.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size)
    return float(diff - half), float(diff + half)


# ---- runs as the unit: stratified bootstrap over runs, per game ---------------------------------

RUN_REPS = 20_000  # bootstrap resamples of runs (rliable's examples use 2,000-50,000)


def _resample(scores: Sequence[np.ndarray], reps: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Per task, ``reps`` resamples of its runs with replacement: (reps, runs of that task) each."""
    return [s[rng.integers(0, s.size, (reps, s.size))] for s in scores]


def _pooled(scores: Sequence[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(s, np.float64) for s in scores], axis=-1)


AGGREGATES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    # (..., runs x tasks) -> (...): rliable's aggregate_iqm, aggregate_mean, aggregate_median on the
    # scores of every run of every task together
    "iqm": lambda x: iqm(x, axis=-1),
    "mean": lambda x: np.mean(x, axis=-1),
    "median": lambda x: np.median(x, axis=-1),
}


def stratified_bootstrap(scores: Sequence[np.ndarray], aggregate: Callable[[np.ndarray], np.ndarray],
                         reps: int = RUN_REPS, seed: int = 0) -> tuple[float, float, float]:
    """(point, low, high): ``aggregate`` of the run scores of every task pooled, with the 95%
    percentile interval of a stratified bootstrap: each resample draws, within each task, as many
    runs as it has, with replacement (rliable's ``StratifiedBootstrap``).

    ``scores``: one array (runs,) per task (here: per game). ``aggregate``: (..., k) -> (...).
    Raises ValueError for a task without runs.
    """
    scores = [np.asarray(s, np.float64).ravel() for s in scores]
    if not scores or any(s.size == 0 for s in scores):
        raise ValueError("every task needs at least one run score")
    point = float(aggregate(_pooled(scores)))
    boot = aggregate(_pooled(_resample(scores, reps, np.random.default_rng(seed))))
    low, high = np.percentile(boot, [50 * (1 - CONFIDENCE), 50 * (1 + CONFIDENCE)])
    return point, float(low), float(high)


def probability_of_improvement(x: Sequence[np.ndarray], y: Sequence[np.ndarray], reps: int = RUN_REPS,
                               seed: int = 0) -> tuple[float, float, float]:
    """P(X > Y): the probability that a run of X scores above a run of Y on the same task, averaged
    over tasks (ties count one half; a Mann-Whitney U statistic divided by the pairs, as rliable's
    ``probability_of_improvement``), with the 95% percentile interval of a stratified bootstrap that
    resamples X's and Y's runs independently within each task.

    ``x``, ``y``: one array (runs,) per task, tasks in the same order. Returns (point, low, high).
    """
    if len(x) != len(y):
        raise ValueError(f"X and Y need the same tasks, got {len(x)} and {len(y)}")
    x = [np.asarray(s, np.float64).ravel() for s in x]
    y = [np.asarray(s, np.float64).ravel() for s in y]

    def poi(xs: list[np.ndarray], ys: list[np.ndarray]) -> np.ndarray:  # (..., n), (..., m) per task
        per_task = [np.mean((a[..., :, None] > b[..., None, :]) + 0.5 * (a[..., :, None] == b[..., None, :]),
                            axis=(-2, -1)) for a, b in zip(xs, ys)]
        return np.mean(per_task, axis=0)

    rng = np.random.default_rng(seed)
    boot = poi(_resample(x, reps, rng), _resample(y, reps, rng))
    low, high = np.percentile(boot, [50 * (1 - CONFIDENCE), 50 * (1 + CONFIDENCE)])
    return float(poi(x, y)), float(low), float(high)


def performance_profile(scores: Sequence[np.ndarray], taus: np.ndarray, reps: int = 2_000, seed: int = 0
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run-score distribution: for each threshold tau, the fraction of runs scoring above tau (per
    task, then averaged over tasks, as rliable's ``create_performance_profile``), with a 95%
    stratified-bootstrap band. ``taus`` (T,); returns (fraction, low, high), each (T,)."""
    scores = [np.asarray(s, np.float64).ravel() for s in scores]

    def profile(xs: list[np.ndarray]) -> np.ndarray:  # (..., runs) per task -> (..., T)
        return np.mean([np.mean(s[..., None] > taus, axis=-2) for s in xs], axis=0)

    boot = profile(_resample(scores, reps, np.random.default_rng(seed)))
    low, high = np.percentile(boot, [50 * (1 - CONFIDENCE), 50 * (1 + CONFIDENCE)], axis=0)
    return profile(scores), low, high
