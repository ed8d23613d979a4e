"""Statistics of a transfer study: how sure is a recipe's gain, and does it carry from small models to large.

Gains are trained-minus-base scores; intervals come from a two-level (seeds, then items) bootstrap.
"""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided interval; nan everywhere when the quantity is undefined."""

    estimate: float
    low: float
    high: float

    def covers(self, value: float) -> bool:
        """Whether `value` lies in [low, high]; never true for an undefined (nan) interval."""
        return bool(self.low <= value <= self.high)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


NAN_INTERVAL = Interval(math.nan, math.nan, math.nan)


def _as_seed_arrays(gains: list[np.ndarray]) -> list[np.ndarray]:
    arrays = [np.asarray(g, dtype=float).ravel() for g in gains]
    if not arrays or any(a.size == 0 for a in arrays):
        raise ValueError("gains must hold at least one seed, and every seed at least one item gain")
    return arrays


def _point_estimate(arrays: list[np.ndarray]) -> float:
    # Every seed weighs the same, however many items it was evaluated on.
    return float(np.mean([a.mean() for a in arrays]))


def _bootstrap_means(arrays: list[np.ndarray], n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Two-level bootstrap: pick seeds with replacement, then items within each picked seed."""
    n_seeds = len(arrays)
    picked = rng.integers(n_seeds, size=(n_resamples, n_seeds))
    slot_means = np.empty(picked.shape)
    # Seeds may differ in item count, so resample items one seed at a time, all its slots at once.
    for i, items in enumerate(arrays):
        slots = picked == i
        draws = rng.integers(items.size, size=(int(slots.sum()), items.size))
        slot_means[slots] = items[draws].mean(axis=1)
    return slot_means.mean(axis=1)


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be strictly between 0 and 1, got {confidence}")


def _percentiles(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = 1.0 - confidence
    low, high = np.quantile(samples, [alpha / 2, 1.0 - alpha / 2])
    return float(low), float(high)


def gain_interval(gains: list[np.ndarray], confidence: float = 0.95, n_resamples: int = 2000,
                  seed: int = 0) -> Interval:
    """Mean gain over seeds with a percentile interval from the two-level bootstrap.

    `gains` holds one array per seed of per-item gains (length 1 when only an aggregate is known).
    """
    _check_confidence(confidence)
    arrays = _as_seed_arrays(gains)
    samples = _bootstrap_means(arrays, n_resamples, np.random.default_rng(seed))
    return Interval(_point_estimate(arrays), *_percentiles(samples, confidence))


def ratio_interval(small: list[np.ndarray], large: list[np.ndarray], confidence: float = 0.95,
                   n_resamples: int = 2000, seed: int = 0) -> Interval:
    """Gain ratio large/small with a percentile interval, both sides bootstrapped independently.

    The ratio is undefined when the small model's mean gain is zero or its bootstrap means cross
    zero (the ratio would jump through infinity); the Interval is then all nan, never inf.
    """
    _check_confidence(confidence)
    small_arrays, large_arrays = _as_seed_arrays(small), _as_seed_arrays(large)
    rng = np.random.default_rng(seed)
    small_samples = _bootstrap_means(small_arrays, n_resamples, rng)
    large_samples = _bootstrap_means(large_arrays, n_resamples, rng)
    denominator = _point_estimate(small_arrays)
    if denominator == 0.0 or small_samples.min() <= 0.0 <= small_samples.max():
        return NAN_INTERVAL
    estimate = _point_estimate(large_arrays) / denominator
    return Interval(estimate, *_percentiles(large_samples / small_samples, confidence))


def sign_agreement(small: dict[str, float], large: dict[str, float]) -> float:
    """Share of shared variants whose gain has the same sign at both scales (zero is its own sign).

    >>> sign_agreement({"a": 0.1, "b": -0.2, "c": 0.0}, {"a": 0.3, "b": 0.1, "c": 0.0, "d": 1.0})
    0.6666666666666666
    """
    shared = sorted(small.keys() & large.keys())
    if not shared:
        return math.nan
    return float(np.mean([np.sign(small[k]) == np.sign(large[k]) for k in shared]))


def _decision_accuracy(small: np.ndarray, large: np.ndarray) -> float:
    # DataDecide's pairwise agreement; a tie at either scale is a coin flip, so it scores half.
    scores = []
    for i, j in itertools.combinations(range(small.size), 2):
        s, g = np.sign(small[i] - small[j]), np.sign(large[i] - large[j])
        scores.append(0.5 if s == 0 or g == 0 else float(s == g))
    return float(np.mean(scores))


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
    with warnings.catch_warnings():
        # Constant gains at one scale leave the correlation undefined: scipy warns and gives nan,
        # and nan is the answer we want, not a warning that -W error would turn into a failure.
        warnings.simplefilter("ignore")
        result["spearman"] = float(stats.spearmanr(x, y).statistic)
        result["kendall"] = float(stats.kendalltau(x, y).statistic)
    result["decision_accuracy"] = _decision_accuracy(x, y)
    return result


@dataclass(frozen=True)
class ScaleFit:
    """OLS of gain on log10(parameters), with a prediction interval at a target size."""

    slope: float
    intercept: float
    r_squared: float
    n_points: int
    target_parameters: float
    prediction: Interval


def fit_gain_vs_scale(parameters: list[float], gains: list[float], target_parameters: float,
                      confidence: float = 0.95) -> ScaleFit:
    """Fit gain = intercept + slope * log10(parameters) and predict a new run at `target_parameters`."""
    _check_confidence(confidence)
    params, y = np.asarray(parameters, dtype=float), np.asarray(gains, dtype=float)
    if params.shape != y.shape or params.ndim != 1:
        raise ValueError("parameters and gains must be flat lists of the same length")
    if np.any(params <= 0) or target_parameters <= 0:
        raise ValueError("parameter counts must be positive")
    if np.unique(params).size < 3:
        # Two sizes fix a line exactly and leave no residual to size the interval from.
        raise ValueError(f"fitting gain against scale needs at least 3 distinct parameter counts, "
                         f"got {np.unique(params).size}")
    x, x0 = np.log10(params), math.log10(target_parameters)
    fit = stats.linregress(x, y)
    n = x.size
    residuals = y - (fit.intercept + fit.slope * x)
    s = math.sqrt(float(residuals @ residuals) / (n - 2))
    sxx = float(((x - x.mean()) ** 2).sum())
    # Prediction (not confidence) interval: a new run at the target size carries its own noise too.
    se = s * math.sqrt(1 + 1 / n + (x0 - x.mean()) ** 2 / sxx)
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 2)) * se
    y0 = float(fit.intercept + fit.slope * x0)
    return ScaleFit(slope=float(fit.slope), intercept=float(fit.intercept), r_squared=float(fit.rvalue ** 2),
                    n_points=n, target_parameters=float(target_parameters),
                    prediction=Interval(y0, y0 - half, y0 + half))
