"""Statistics of a transfer study: how sure is a recipe's gain, and does it carry from small models to large.

Pure functions over arrays (numpy and scipy, no torch). The data come from a crossed design, and every
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

import itertools
import math
import warnings
import zlib
from dataclasses import asdict, dataclass

import numpy as np
from scipy import special, stats


@dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided interval; nan everywhere when the quantity is undefined."""

    estimate: float
    low: float
    high: float

    def covers(self, value: float) -> bool:
        """Whether `value` lies in [low, high]; never true for an undefined (nan) interval."""
        return bool(self.low <= value <= self.high)

    def excludes_zero(self) -> bool:
        return bool(self.low > 0 or self.high < 0)

    def to_json(self) -> dict[str, float]:
        return asdict(self)


NAN_INTERVAL = Interval(math.nan, math.nan, math.nan)


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be strictly between 0 and 1, got {confidence}")


def percentile_interval(estimate: float, replicates: np.ndarray, confidence: float = 0.95) -> Interval:
    """`estimate` with the central `confidence` range of its replicates (nan replicates make it undefined)."""
    _check_confidence(confidence)
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
    _check_confidence(confidence)
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

    def standard_error_at(self, n_seeds: int, n_items: int) -> float:
        """The standard error a design of `n_seeds` x `n_items` would have, with these components."""
        item = (self.item_var - self.residual_var / self.n_seeds) + self.residual_var / n_seeds
        return math.sqrt(max(item, 0.0) / n_items + self.seed_var / n_seeds)

    def degrees_of_freedom(self) -> float:
        """Welch-Satterthwaite degrees of freedom of the standard error (items ~ n - 1, seeds S - 1)."""
        parts = [(self.item_var / self.n_items, self.n_items - 1), (self.seed_var / self.n_seeds, self.n_seeds - 1)]
        parts = [(v, df) for v, df in parts if v > 0 and df > 0]
        if not parts:
            return math.inf
        return sum(v for v, _ in parts) ** 2 / sum(v * v / df for v, df in parts)


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


# --- power ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Power:
    """What would resolve an effect of the observed size at the measured noise (95% interval, 80% power).

    `seeds`: seeds needed at the current item count (None: more than `max_seeds`); `items`: items needed at
    the current seed count (None: no item count suffices, the seed spread alone is too large, or more than
    `max_items`); `detectable`: the smallest effect the current design resolves with 80% power;
    `together`: when neither alone suffices, the (seeds, items) design of fewest seed-item evaluations that
    does (None: none within `max_seeds` and `max_items`).
    """

    effect: float
    seeds: int | None
    items: int | None
    detectable: float
    together: tuple[int, int] | None = None

    def to_json(self) -> dict:
        return asdict(self)


def required_design(parts: VarianceParts, effect: float, confidence: float = 0.95, power: float = 0.8,
                    max_seeds: int = 200, max_items: int = 100_000) -> Power:
    """How many seeds (items fixed) or items (seeds fixed) make an effect of size `effect` resolved with
    probability `power`: |effect| >= (t_crit + z_power) * standard error of that design.

    >>> p = VarianceParts(0.02, 3, 200, item_var=0.02, seed_var=0.00005, residual_var=0.01)
    >>> r = required_design(p, 0.02)
    >>> r.seeds, r.items, round(r.detectable, 3)
    (None, 723, 0.031)
    """
    z_power = float(stats.norm.ppf(power))
    size = abs(effect)

    def needed_se(df: float) -> float:
        # stats.t.ppf is special.stdtrit behind ~50 us of argument checks; this search calls it thousands of times.
        return size / (float(special.stdtrit(max(df, 1.0), 0.5 + confidence / 2)) + z_power)

    def df_at(s: int, n: int) -> float:
        scaled = VarianceParts(parts.mean, s, n, parts.item_var - parts.residual_var / parts.n_seeds +
                               parts.residual_var / s, parts.seed_var, parts.residual_var)
        return scaled.degrees_of_freedom()

    def enough(s: int, n: int) -> bool:
        return size > 0 and parts.standard_error_at(s, n) <= needed_se(df_at(s, n))

    def fewest_items(s: int) -> int | None:
        n = parts.n_items
        while n <= max_items:
            if enough(s, n):
                return n
            n = max(n + 1, int(n * 1.05))
        return None

    seeds = next((s for s in range(2, max_seeds + 1) if enough(s, parts.n_items)), None)
    items = fewest_items(parts.n_seeds) if parts.n_items > 1 else None
    together = None
    if seeds is None and items is None and parts.n_items > 1 and size > 0:
        designs = [(s, n) for s in range(parts.n_seeds + 1, min(max_seeds, 50) + 1) if (n := fewest_items(s))]
        together = min(designs, key=lambda d: (d[0] * d[1], d[0]), default=None)
    df = parts.degrees_of_freedom()
    t_crit = float(stats.t.ppf(0.5 + confidence / 2, max(df, 1.0)))
    return Power(float(effect), seeds, items, (t_crit + z_power) * parts.standard_error, together)


# --- orderings ------------------------------------------------------------------------------------

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
