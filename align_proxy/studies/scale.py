"""A straight line through one point per model size, and what it says past the largest size, honestly sized.

Every trend across sizes in a study is this fit: a recipe's gain against log10(parameters) and its prediction at
the target (`analysis`), and an overoptimization coefficient against reward-model size (`overoptimization`).
With 3-5 sizes the residual scatter about the line has 1-3 degrees of freedom, and three points that happen to
line up leave almost none: a prediction sized from the residuals alone collapses exactly then, far past the data,
where a wrong answer costs most. So the interval carries two parts:

- **measurement**: the line refitted on every joint replicate of the points (`CrossedResampler` draws them, so
  sizes scored on shared items stay correlated as they were), each replicate's slope and prediction;
- **lack of fit**: the scatter of the points about the line *beyond* what their measurement noise explains. Its point
  estimate (`ScaleFit.lack_of_fit`) is `tau^2 = max(0, RSS / (k - 2) - tr((I - H) Sigma) / (k - 2))`, with `Sigma`
  the points' replicate covariance and H the hat matrix. Its uncertainty enters as a generalized pivotal draw per
  replicate, `tau^2 = max(0, RSS / chi2_{k-2} - tr((I - H) Sigma) / (k - 2))` (Weerahandi), times a normal: with
  k - 2 = 1 a small RSS is not taken for a small lack of fit. (A moment estimate with a t draw covered the true
  line in only 0.918 of planted 3-point fits whose scatter was all lack of fit; this draw covers it in 0.94.)

The interval is the central range of each replicate's value plus its lack-of-fit draw, never narrower than the
measurement interval alone; the sign's probability is read from the same draws and is never surer than the
measurement's own. R^2 plays no part: a high R^2 over three noisy points is chance, not evidence.
`tests/test_scale.py::test_the_prediction_at_the_target_covers_the_truth_in_the_studys_design` checks the coverage
in the default study's design through `analyse`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from align_proxy.studies.stats.intervals import Interval, check_confidence, percentile_interval


# The lack-of-fit draws' own seed: the same data give the same interval in every process.
LACK_OF_FIT_SEED = 20261207


@dataclass(frozen=True)
class ScaleFit:
    """value = intercept + slope * log10(parameters), one point per size, with intervals from both parts above."""

    slope: float
    intercept: float
    r_squared: float  # shown for the reader; decides nothing
    n_points: int
    degrees_of_freedom: int
    slope_interval: Interval
    lack_of_fit: float  # tau: the points' scatter about the line beyond their measurement noise (0 when none)
    target_parameters: float | None
    prediction: Interval | None  # at target_parameters: measurement and lack of fit together
    measurement: Interval | None  # at target_parameters: the refits on replicates alone
    # P(the value at the target is > 0), from the same distribution as `prediction`.
    probability_positive: float | None
    # The draws `prediction` is read from (each replicate's refit at the target plus its lack-of-fit draw), for a
    # quantity computed from the prediction replicate by replicate (`analysis.optima`'s cost of not adjusting).
    prediction_draws: np.ndarray | None = field(default=None, repr=False, compare=False)


def fit_line_across_sizes(parameters: list[float], values: list[float], replicates: np.ndarray,
                          target_parameters: float | None = None, confidence: float = 0.95) -> ScaleFit:
    """Fit `values` (one per size) against log10(`parameters`) and size the slope, and the prediction at
    `target_parameters`, from `replicates` (replicates x sizes, drawn jointly) and the lack of fit beyond them.

    Three sizes whose points line up by chance (R^2 0.999) still get an interval as wide as their noise:

    >>> rng = np.random.default_rng(0)
    >>> reps = np.array([0.123, 0.087, 0.067]) + rng.normal(0, 0.017, (2000, 3))
    >>> f = fit_line_across_sizes([2e5, 8e5, 1.79e6], [0.123, 0.087, 0.067], reps, 3.45e8)
    >>> round(f.prediction.estimate, 3), f.prediction.low < -0.15, f.prediction.high > 0.0
    (-0.068, True, True)
    """
    check_confidence(confidence)
    params, y = np.asarray(parameters, dtype=float), np.asarray(values, dtype=float)
    reps = np.asarray(replicates, dtype=float)
    if params.shape != y.shape or params.ndim != 1:
        raise ValueError("parameters and values must be flat lists of the same length")
    if reps.ndim != 2 or reps.shape[1] != y.size:
        raise ValueError(f"replicates must be (replicates x sizes) with {y.size} columns, got shape {reps.shape}")
    if np.any(params <= 0) or (target_parameters is not None and target_parameters <= 0):
        raise ValueError("parameter counts must be positive")
    if np.unique(params).size != params.size or params.size < 3:
        # Two sizes fix a line exactly and leave no residual to judge its lack of fit by.
        raise ValueError(f"a line across sizes needs at least 3 models of distinct sizes (one value each), got "
                         f"{params.size} point(s) over {np.unique(params).size} size(s)")
    x = np.log10(params)
    design = np.column_stack([np.ones_like(x), x])
    projection = np.linalg.pinv(design)  # 2 x k: (intercept, slope) of any column of values
    intercept, slope = projection @ y
    residuals = y - design @ np.array([intercept, slope])
    k, df = y.size, y.size - 2
    sxx = float(((x - x.mean()) ** 2).sum())
    total = float(((y - y.mean()) ** 2).sum())
    r_squared = 1.0 - float(residuals @ residuals) / total if total > 0 else math.nan

    refits = reps @ projection.T  # replicates x (intercept, slope)
    finite = bool(np.all(np.isfinite(refits)))
    noise = np.cov(reps.T) if finite and reps.shape[0] > 1 else np.zeros((k, k))
    rss = float(residuals @ residuals)
    # The measurement noise's share of the RSS, per degree of freedom: what the scatter would be with no lack of fit.
    noise_per_df = float(np.trace((np.eye(k) - design @ projection) @ noise)) / df
    tau = math.sqrt(max(0.0, rss / df - noise_per_df))
    # Lack of fit per replicate, a generalized pivotal draw (Weerahandi): tau^2 = max(0, RSS / chi2_df - noise),
    # so that with k - 2 degrees of freedom a small RSS is not taken for a small lack of fit.
    rng = np.random.default_rng(LACK_OF_FIT_SEED)
    chi2 = rng.chisquare(df, len(refits))
    lack = np.sqrt(np.maximum(0.0, rss / chi2 - noise_per_df)) * rng.standard_normal(len(refits))

    slope_interval = _widened(float(slope), refits[:, 1], lack / math.sqrt(sxx), confidence)
    prediction = measurement = positive = draws = None
    if target_parameters is not None:
        x0 = math.log10(target_parameters)
        at_target = refits[:, 0] + refits[:, 1] * x0
        estimate = float(intercept + slope * x0)
        spread = lack * math.sqrt(1.0 + 1.0 / k + (x0 - x.mean()) ** 2 / sxx)  # a new size departs as the rungs do
        measurement = percentile_interval(estimate, at_target, confidence)
        prediction = _widened(estimate, at_target, spread, confidence)
        positive = _least_sure(_share_positive(at_target + spread), _share_positive(at_target))
        draws = at_target + spread
    return ScaleFit(slope=float(slope), intercept=float(intercept), r_squared=r_squared, n_points=k,
                    degrees_of_freedom=df, slope_interval=slope_interval, lack_of_fit=tau,
                    target_parameters=None if target_parameters is None else float(target_parameters),
                    prediction=prediction, measurement=measurement, probability_positive=positive,
                    prediction_draws=draws)


def _widened(estimate: float, centers: np.ndarray, spread: np.ndarray, confidence: float) -> Interval:
    """The central range of `centers + spread` (replicates and their lack-of-fit draws), never narrower than that of
    `centers` alone; undefined where a replicate is."""
    alone = percentile_interval(estimate, centers, confidence)
    if math.isnan(alone.low):
        return alone
    both = percentile_interval(estimate, centers + spread, confidence)
    return Interval(estimate, min(alone.low, both.low), max(alone.high, both.high))


def _share_positive(values: np.ndarray) -> float:
    if not np.all(np.isfinite(values)):
        return math.nan
    return float((values > 0).mean() + 0.5 * (values == 0).mean())


def _least_sure(p: float, q: float) -> float:
    """Of two probabilities of one event, the one nearer 1/2."""
    return p if abs(p - 0.5) <= abs(q - 0.5) else q
