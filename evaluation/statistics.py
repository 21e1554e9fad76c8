"""Statistics of evaluation results: bootstrap confidence intervals, IQM, per-agent summaries.

scipy's tested implementations (``scipy.stats.bootstrap``, ``trim_mean``) rather than our own.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
from scipy import stats as sps

from core.config import Config
from evaluation.episodes import EpisodeStats
from envs.games import get_game

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
