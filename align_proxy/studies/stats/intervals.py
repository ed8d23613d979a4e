"""Intervals: a point estimate with its two-sided range, from replicates (percentile), from replicates censored at
the edge of the data, and of a ratio of two quantities. Pure functions over arrays (numpy, no torch)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from align_proxy.studies.record import Record


@dataclass(frozen=True)
class Interval(Record):
    """A point estimate with a two-sided interval; nan everywhere when the quantity is undefined."""

    estimate: float
    low: float
    high: float

    def covers(self, value: float) -> bool:
        """Whether `value` lies in [low, high]; never true for an undefined (nan) interval."""
        return bool(self.low <= value <= self.high)

    def excludes_zero(self) -> bool:
        return bool(self.low > 0 or self.high < 0)


NAN_INTERVAL = Interval(math.nan, math.nan, math.nan)


def check_confidence(confidence: float) -> None:
    """Raise a ValueError naming the value unless 0 < confidence < 1."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be strictly between 0 and 1, got {confidence}")


def percentile_interval(estimate: float, replicates: np.ndarray, confidence: float = 0.95) -> Interval:
    """`estimate` with the central `confidence` range of its replicates (nan replicates make it undefined)."""
    check_confidence(confidence)
    replicates = np.asarray(replicates, dtype=float)
    if replicates.size == 0 or not np.all(np.isfinite(replicates)) or not math.isfinite(estimate):
        return Interval(float(estimate), math.nan, math.nan)
    alpha = 1.0 - confidence
    low, high = np.quantile(replicates, [alpha / 2, 1.0 - alpha / 2])
    return Interval(float(estimate), float(low), float(high))


def censored_interval(estimate: float, replicates: np.ndarray, upper_replicates: np.ndarray | None = None,
                      confidence: float = 0.95) -> Interval:
    """`percentile_interval` for replicates censored at the edge of the data: +inf for one known only to lie past
    the largest value the data can show (a curve's peak beyond its last point), -inf for one below the smallest.
    A bound whose quantile reaches into the censored share is infinite: the data do not bound that side.
    `upper_replicates`, when given, is read for the upper bound and `replicates` for the lower: a difference of
    two censored values is unknown in sign, -inf for the one and +inf for the other. nan replicates, or a
    non-finite estimate, leave the interval undefined.

    >>> censored_interval(0.0, np.r_[np.zeros(90), np.full(10, np.inf)])  # 10% past the data: no upper bound
    Interval(estimate=0.0, low=0.0, high=inf)
    >>> censored_interval(0.5, np.r_[np.linspace(0.0, 1.0, 999), np.inf]).high < 1.0  # 0.1%: bounded as usual
    True
    """
    check_confidence(confidence)
    lower = np.asarray(replicates, dtype=float)
    upper = lower if upper_replicates is None else np.asarray(upper_replicates, dtype=float)
    if lower.size == 0 or np.isnan(lower).any() or np.isnan(upper).any() or not math.isfinite(estimate):
        return Interval(float(estimate), math.nan, math.nan)
    alpha = 1.0 - confidence
    return Interval(float(estimate), _quantile_past_the_data(lower, alpha / 2),
                    _quantile_past_the_data(upper, 1.0 - alpha / 2))


def _quantile_past_the_data(values: np.ndarray, q: float) -> float:
    """np.quantile's (linear) quantile of values that may hold +-inf: infinite where it interpolates into them."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return float(np.quantile(values, q, method="nearest"))
    beyond = 2.0 * max(1.0, float(np.abs(finite).max()))  # stands in for +-inf, so the interpolation stays finite
    value = float(np.quantile(np.clip(values, -beyond, beyond), q))
    return math.inf if value > finite.max() else -math.inf if value < finite.min() else value



def ratio_interval(small: np.ndarray, large: np.ndarray, confidence: float = 0.95) -> Interval:
    """Ratio of two quantities' replicates (large / small), undefined (all nan) when the small one's
    central replicates reach zero: the ratio would jump through infinity.

    `small` and `large` are arrays of [estimate, replicate_1, ..., replicate_R].
    """
    small, large = np.asarray(small, dtype=float), np.asarray(large, dtype=float)
    alpha = 1.0 - confidence
    lo, hi = np.quantile(small[1:], [alpha / 4, 1 - alpha / 4])
    if small[0] == 0.0 or lo <= 0.0 <= hi:
        return NAN_INTERVAL
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = large[1:] / small[1:]
    # A replicate of exactly 0 lies in the small one's outer tail (its central range excludes 0): its ratio is an
    # infinite tail value, which the central quantiles do not reach; a nan (a failed replicate, or 0/0) is undefined.
    return censored_interval(float(large[0] / small[0]), ratios, confidence=confidence)

