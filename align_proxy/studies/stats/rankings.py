"""How alike two scales order the variants: decision accuracy (DataDecide), rank correlations, sign agreement."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
from scipy import stats


def decision_accuracy(small: np.ndarray, large: np.ndarray) -> np.ndarray:
    """DataDecide's pairwise agreement of two orderings, along the last axis (a tie at either scale is a
    coin flip, so it scores half). Works on one vector of variants or on (replicates x variants).

    >>> float(decision_accuracy(np.array([0.1, 0.2, 0.3]), np.array([1.0, 3.0, 2.0])))
    0.6666666666666666
    """
    small, large = np.asarray(small, dtype=float), np.asarray(large, dtype=float)
    pairs = list(itertools.combinations(range(small.shape[-1]), 2))
    if not pairs:
        return np.full(small.shape[:-1], math.nan)
    scores = []
    for i, j in pairs:
        s, g = np.sign(small[..., i] - small[..., j]), np.sign(large[..., i] - large[..., j])
        scores.append(np.where((s == 0) | (g == 0), 0.5, (s == g).astype(float)))
    return np.mean(scores, axis=0)


def rank_correlations(small: np.ndarray, large: np.ndarray) -> tuple[float, float]:
    """(Spearman, Kendall) of two orderings; nan when either is constant (no warning)."""
    if len(small) < 2:
        return math.nan, math.nan
    with warnings.catch_warnings():
        # Constant gains at one scale leave the correlation undefined: scipy warns and gives nan,
        # and nan is the answer we want, not a warning that -W error would turn into a failure.
        warnings.simplefilter("ignore")
        return float(stats.spearmanr(small, large).statistic), float(stats.kendalltau(small, large).statistic)


def sign_agreement(small: dict[str, float], large: dict[str, float]) -> float:
    """Share of shared variants whose gain has the same sign at both scales (zero is its own sign).

    >>> sign_agreement({"a": 0.1, "b": -0.2, "c": 0.0}, {"a": 0.3, "b": 0.1, "c": 0.0, "d": 1.0})
    0.6666666666666666
    """
    shared = sorted(small.keys() & large.keys())
    if not shared:
        return math.nan
    return float(np.mean([np.sign(small[k]) == np.sign(large[k]) for k in shared]))


def rank_agreement(small: dict[str, float], large: dict[str, float]) -> dict[str, float | int]:
    """How well the small scale orders the shared variants by gain as the large scale does.

    >>> r = rank_agreement({"a": 0.1, "b": 0.2, "c": 0.3}, {"a": 1.0, "b": 3.0, "c": 2.0})
    >>> round(r["kendall"], 3), round(r["decision_accuracy"], 3), r["n_variants"]
    (0.333, 0.667, 3)
    """
    shared = sorted(small.keys() & large.keys())
    result: dict[str, float | int] = {"spearman": math.nan, "kendall": math.nan,
                                      "decision_accuracy": math.nan, "n_variants": len(shared)}
    if len(shared) < 2:
        return result
    x = np.array([small[k] for k in shared], dtype=float)
    y = np.array([large[k] for k in shared], dtype=float)
    result["spearman"], result["kendall"] = rank_correlations(x, y)
    result["decision_accuracy"] = float(decision_accuracy(x, y))
    return result
