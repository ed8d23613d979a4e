"""Replicates of a transfer study's quantities, drawn as the study's data were made, and the intervals built on them.

Pure functions over arrays (numpy, no torch). The data come from a crossed design, and every
interval here is built for it:

- every seed of every cell is scored on the *same* held-out items (they follow `eval_seed`), and the
  base model is scored on them once, so an item's difficulty is shared by all seeds: its sampling
  error does not average away over seeds;
- each seed is its own training run, so a seed shifts the whole score (a seed effect), and with 3-5
  seeds that spread is itself badly known.

A quantity's scores form a (seeds x items) matrix. Its estimate is the grand mean, whose variance is
`var(item part) + var(seed part)` with the item part `(sigma_item^2 + sigma_interaction^2 / S) / n` and the
seed part `sigma_seed^2 / S`. `CrossedResampler` draws replicates of every quantity at once:

- the item part nonparametrically, by one bootstrap draw of item indices *shared* by every quantity
  scored on those items (all seeds, variants, recipes and models), so paired comparisons stay paired;
- the seed part parametrically, as a Student t with S - 1 degrees of freedom scaled by the seed
  spread net of item noise (two-way ANOVA: var(seed means) - MS_residual / n). A percentile bootstrap
  over 3 seeds has only 10 distinct means and a variance (S - 1) / S too small; the t draw is what a
  hierarchical model with a flat prior on the seed variance gives, so with a dominant seed effect the
  interval is the classical t interval and with none it is the item bootstrap. Metrics of the same
  cells share the seed draw through their seed deviations, so a lucky seed is lucky on every metric.

`tests/test_calibration.py` simulates the study's design (shared items, one base evaluation, seed
effects from none to large, 3 and 5 seeds, binary and continuous metrics) and checks that nominal 95%
intervals cover the true expected gain at least 93% of the time; `benchmarks/calibration.py` runs
the full sweep.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np

from align_proxy.studies.stats.intervals import Interval, percentile_interval, ratio_interval


# --- one quantity's scores -------------------------------------------------------------------------

def as_matrix(seeds: list) -> np.ndarray:
    """Per-seed scores as a (seeds x items) matrix; seeds of unequal length (or aggregates) keep only each
    seed's mean, one column, so seeds still count and items cannot be resampled."""
    arrays = [np.asarray(s, dtype=float).ravel() for s in seeds]
    if not arrays or any(a.size == 0 for a in arrays):
        raise ValueError("scores must hold at least one seed, and every seed at least one item")
    if len({a.size for a in arrays}) == 1:
        return np.vstack(arrays)
    return np.array([[a.mean()] for a in arrays])


@dataclass(frozen=True)
class VarianceParts:
    """A (seeds x items) matrix's grand mean and the variance components its interval rests on.

    `item_var`: variance of an item's seed-averaged score (sigma_item^2 + sigma_interaction^2 / S);
    `seed_var`: the seed effect's variance, net of item noise (sigma_seed^2, never negative);
    `residual_var`: the seed-by-item interaction (sigma_interaction^2).

    >>> m = np.array([[1.0, 0.0, 1.0, 1.0], [1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    >>> p = VarianceParts.of(m)
    >>> round(p.mean, 3), p.n_seeds, p.n_items, round(p.standard_error, 3)
    (0.75, 3, 4, 0.186)
    """

    mean: float
    n_seeds: int
    n_items: int
    item_var: float
    seed_var: float
    residual_var: float

    @classmethod
    def of(cls, matrix: np.ndarray) -> VarianceParts:
        m = np.asarray(matrix, dtype=float)
        s, n = m.shape
        grand = float(m.mean())
        item_means, seed_means = m.mean(axis=0), m.mean(axis=1)
        item_var = float(item_means.var(ddof=1)) if n > 1 else 0.0
        seed_means_var = float(seed_means.var(ddof=1)) if s > 1 else 0.0
        if s > 1 and n > 1:
            residual = m - item_means[None, :] - seed_means[:, None] + grand
            residual_var = float((residual ** 2).sum() / ((s - 1) * (n - 1)))
        else:
            residual_var = 0.0
        # A seed mean carries its seed's interaction noise over n items; what is left is the seed effect.
        seed_var = max(0.0, seed_means_var - residual_var / n)
        return cls(grand, s, n, item_var, seed_var, residual_var)

    @property
    def standard_error(self) -> float:
        return math.sqrt(self.item_var / self.n_items + self.seed_var / self.n_seeds)

    def item_var_at(self, n_seeds):
        """The item component a design of `n_seeds` would have: the item variance with its share of the interaction
        noise (residual / seeds) taken at `n_seeds` instead of this design's count (a number or an array)."""
        return (self.item_var - self.residual_var / self.n_seeds) + self.residual_var / n_seeds

    def standard_error_at(self, n_seeds, n_items):
        """The standard error a design of `n_seeds` x `n_items` would have, with these components (numbers, or
        numpy arrays of designs that broadcast)."""
        return np.sqrt(np.maximum(self.item_var_at(n_seeds), 0.0) / n_items + self.seed_var / n_seeds)

    def degrees_of_freedom(self) -> float:
        """Welch-Satterthwaite degrees of freedom of the standard error (items ~ n - 1, seeds S - 1)."""
        return float(welch_degrees_of_freedom(self.item_var / self.n_items, self.n_items - 1,
                                              self.seed_var / self.n_seeds, self.n_seeds - 1))


def welch_degrees_of_freedom(item_part, item_df, seed_part, seed_df):
    """Welch-Satterthwaite degrees of freedom of a variance that is an item part plus a seed part, each with its
    own degrees of freedom; a part that is zero or has none is left out, and with neither left it is infinite.
    Numbers or numpy arrays that broadcast.

    >>> round(float(welch_degrees_of_freedom(0.02, 199, 0.0, 2)), 9), float(welch_degrees_of_freedom(0.0, 0, 0.0, 2))
    (199.0, inf)
    >>> round(float(welch_degrees_of_freedom(0.01, 99, 0.01, 2)), 3)  # an equal seed part on 2 degrees pulls it down
    7.842
    """
    item_part, item_df, seed_part, seed_df = (np.asarray(x, float) for x in (item_part, item_df, seed_part, seed_df))
    with np.errstate(divide="ignore", invalid="ignore"):  # the parts left out may divide by zero degrees
        use_item, use_seed = (item_part > 0) & (item_df > 0), (seed_part > 0) & (seed_df > 0)
        total = np.where(use_item, item_part, 0.0) + np.where(use_seed, seed_part, 0.0)
        spread = (np.where(use_item, item_part * item_part / item_df, 0.0) +
                  np.where(use_seed, seed_part * seed_part / seed_df, 0.0))
        # float_power is libm's pow, as the scalar `total ** 2` this replaced (numpy's square rounds apart ~0.1% of
        # the time), so the degrees of freedom, and every interval on them, stay bit-identical.
        return np.where(use_item | use_seed, np.float_power(total, 2) / spread, np.inf)


# --- replicates -----------------------------------------------------------------------------------

class CrossedResampler:
    """Replicates of many quantities of one study, drawn jointly as the study's data were made.

    Quantities scored on the same items (same item count) share one bootstrap draw of item indices;
    quantities from the same training runs (`group`: a recipe variant on a model) share one seed draw.
    Every call is deterministic for the resampler's seed.
    """

    def __init__(self, n_resamples: int = 2000, seed: int = 0):
        if n_resamples < 100:
            raise ValueError(f"n_resamples must be at least 100, got {n_resamples}")
        self.n_resamples = n_resamples
        self._seed = seed
        self._item_weights: dict[int, np.ndarray] = {}
        self._seed_draws: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}

    def item_weights(self, n_items: int) -> np.ndarray:
        """(n_resamples x n_items) bootstrap counts / n_items: row r averages a resample of items."""
        if n_items not in self._item_weights:
            rng = np.random.default_rng([self._seed, 1, n_items])
            picks = rng.integers(n_items, size=(self.n_resamples, n_items))
            rows = np.arange(self.n_resamples)[:, None] * n_items
            counts = np.bincount((picks + rows).ravel(), minlength=self.n_resamples * n_items)
            self._item_weights[n_items] = counts.reshape(self.n_resamples, n_items) / n_items
        return self._item_weights[n_items]

    def _seed_draw(self, group: tuple, n_seeds: int) -> tuple[np.ndarray, np.ndarray]:
        """Standard normals (R x S) and the t scale sqrt((S-1) / chi2_{S-1}) (R,) for one group's runs."""
        key = (group, n_seeds)
        if key not in self._seed_draws:
            rng = np.random.default_rng([self._seed, 2, _stable_hash(group), n_seeds])
            z = rng.standard_normal((self.n_resamples, n_seeds))
            scale = np.sqrt((n_seeds - 1) / rng.chisquare(n_seeds - 1, self.n_resamples)) if n_seeds > 1 else \
                np.zeros(self.n_resamples)
            self._seed_draws[key] = (z, scale)
        return self._seed_draws[key]

    def replicates(self, matrix: np.ndarray, group: tuple) -> np.ndarray:
        """Replicates of the grand mean of a (seeds x items) matrix (see the module docstring)."""
        m = np.asarray(matrix, dtype=float)
        s, n = m.shape
        parts = VarianceParts.of(m)
        replicates = np.full(self.n_resamples, parts.mean)
        if n > 1:
            replicates = self.item_weights(n) @ m.mean(axis=0)
        if s > 1:
            z, scale = self._seed_draw(group, s)
            deviations = m.mean(axis=1) - parts.mean
            spread = float(np.sqrt(deviations.var(ddof=1)))
            # Shrink the seed deviations to the seed effect net of item noise, keeping their pattern (shared by
            # every metric of the group through `z`), then give them a t_{S-1} scale.
            shrink = math.sqrt(parts.seed_var) / spread if spread > 0 else 0.0
            seed_part = (z @ (deviations * shrink)) / math.sqrt(s - 1) / math.sqrt(s) * scale
            replicates = replicates + seed_part
        return replicates


def _stable_hash(value) -> int:
    """The same number for the same group in every process (Python's hash() of a string is salted)."""
    return zlib.crc32(repr(value).encode())


def mean_interval(seeds: list, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0) -> Interval:
    """Mean over seeds and items of per-seed score arrays, with the crossed interval of the module docstring.

    `seeds` holds one array per seed (per-item scores on the same items, or one aggregate each).

    >>> rng = np.random.default_rng(0)
    >>> iv = mean_interval([rng.normal(0.2, 0.3, 200) for _ in range(3)])
    >>> iv.low < 0.2 < iv.high, round(iv.estimate, 2)
    (True, 0.19)
    """
    matrix = as_matrix(seeds)
    if matrix.size == 1:
        value = float(matrix[0, 0])
        return Interval(value, math.nan, math.nan)
    resampler = CrossedResampler(n_resamples, seed)
    return percentile_interval(float(matrix.mean()), resampler.replicates(matrix, ("quantity",)), confidence)


# A gain is a mean of per-item (trained - base) differences: the same interval.
gain_interval = mean_interval


def gap_closed(proxy_gain: list, tuned_gain: list, resampler: CrossedResampler | None = None,
               groups: tuple[tuple, tuple] = (("proxy",), ("tuned",)), confidence: float = 0.95) -> Interval:
    """Share of the base-to-tuned gap that proxy-tuning closes (Liu et al. 2024):
    mean(proxy - base) / mean(tuned - base), per metric in its own units (a lower-is-better metric's gaps are
    both negative, so the share reads the same way).

    `proxy_gain` and `tuned_gain` hold per-seed arrays of per-item differences from the large base model, on
    the same items (as `mean_interval` takes them). Their replicates share one item draw (the same items are
    resampled for both, so the ratio stays paired) and each its own seed draw (`groups`: the runs the proxy's
    expert and the tuned model came from). The interval is undefined (nan bounds, the estimate kept) when the
    tuned gain's interval reaches zero: a gap that may not exist has no share to bound (`ratio_interval`).

    >>> import math, numpy as np
    >>> tuned = np.r_[np.ones(100), np.zeros(100)]          # tuning fixes 100 of 200 items
    >>> proxy = np.r_[np.ones(40), np.zeros(160)]           # proxy-tuning 40 of them
    >>> iv = gap_closed([proxy], [tuned])
    >>> round(iv.estimate, 2), bool(0.3 < iv.low < 0.4 < iv.high < 0.5)
    (0.4, True)
    >>> iv = gap_closed([proxy], [np.r_[np.ones(50), -np.ones(45), np.zeros(105)]])
    >>> round(iv.estimate, 1), math.isnan(iv.low)
    (8.0, True)
    """
    resampler = resampler or CrossedResampler()
    proxy, tuned = as_matrix(proxy_gain), as_matrix(tuned_gain)
    if proxy.shape[1] != tuned.shape[1]:
        raise ValueError(f"proxy and tuned gains must be scored on the same items: {proxy.shape[1]} against "
                         f"{tuned.shape[1]}")
    proxy_replicates = np.r_[proxy.mean(), resampler.replicates(proxy, groups[0])]
    tuned_replicates = np.r_[tuned.mean(), resampler.replicates(tuned, groups[1])]
    interval = ratio_interval(tuned_replicates, proxy_replicates, confidence)
    if math.isnan(interval.estimate) and tuned_replicates[0] != 0:
        return Interval(float(proxy_replicates[0] / tuned_replicates[0]), math.nan, math.nan)
    return interval


def probability_greater(a: np.ndarray, b: np.ndarray) -> float:
    """Share of replicates in which `a` exceeds `b`, ties counting half.

    >>> probability_greater(np.array([1.0, 2.0, 3.0]), np.array([0.0, 2.0, 4.0]))
    0.5
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.mean((a > b) + 0.5 * (a == b)))

