"""Reward-model overoptimization (Gao, Schulman and Hilton 2022, arXiv 2210.10760): how far a policy can be
optimised against a proxy reward model before the gold reward falls.

Pure functions over arrays (numpy and scipy, no torch), like `stats`:

- `best_of_n`: the expected gold and proxy reward of best-of-n, for every n <= N, computed exactly from one
  pool of N samples per prompt: the mean over all C(N, n) subsets of the sample the proxy ranks first, by
  order statistics rather than by resampling subsets.
- `kl_best_of_n`: the analytic KL of best-of-n to the policy, log n - (n - 1) / n, an upper bound (Beirami
  et al. 2024) that is loose when samples repeat; `empirical_kl_best_of_n` measures it on the pool itself,
  identical completions merged, so a small model that repeats itself shows how loose.
- `fit_overoptimization`: Gao et al.'s forms R_bon(d) = d (alpha - beta d) and R_RL(d) = d (alpha - beta log d),
  with d = sqrt(KL) and R the gain over the initial policy (R(0) = 0). Both are linear in (alpha, beta), so
  each is a least-squares fit through the origin; its intervals come from resampling the prompts (the items
  every point of a curve shares), and the peak d* and the gold reward there follow from each replicate.

alpha and beta against reward-model size (the trend a large run needs) is `stats.fit_gain_vs_scale`, one point
per size (`evals.overoptimization.trend`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import special

from align_proxy.studies.stats import Interval, percentile_interval


# --- best-of-n from one pool -------------------------------------------------------------------------------

def selection_probabilities(proxy: np.ndarray, n: int) -> np.ndarray:
    """P(sample i is the one best-of-n picks), over all size-n subsets of the pool drawn uniformly.

    The subset's top proxy score lies in a tie group occupying sorted positions [a, b) with probability
    (C(b, n) - C(a, n)) / C(N, n); within the group each tied sample is picked equally often.

    >>> selection_probabilities(np.array([0.1, 0.3, 0.2]), 2).round(3).tolist()  # top of 2 of 3: C(i, 1)/C(3, 2)
    [0.0, 0.667, 0.333]
    >>> selection_probabilities(np.array([1.0, 1.0, 0.0]), 2).round(3).tolist()  # a tie at the top shares
    [0.5, 0.5, 0.0]
    """
    proxy = np.asarray(proxy, dtype=float)
    size = proxy.size
    if not 1 <= n <= size:
        raise ValueError(f"best-of-n needs 1 <= n <= pool size ({size}), got n={n}")
    order = np.argsort(proxy, kind="stable")
    ranked = proxy[order]
    probabilities = np.empty(size)
    total = special.comb(size, n, exact=False)
    start = 0
    while start < size:
        stop = start + 1
        while stop < size and ranked[stop] == ranked[start]:
            stop += 1
        group = (special.comb(stop, n, exact=False) - special.comb(start, n, exact=False)) / total
        probabilities[order[start:stop]] = group / (stop - start)
        start = stop
    return probabilities


class GainsOverStart:
    """Gold and proxy reward as gains over each prompt's first point (n = 1, or step 0): Gao et al.'s R(d)."""

    gold: np.ndarray
    proxy: np.ndarray

    @property
    def gold_gain(self) -> np.ndarray:
        return self.gold - self.gold[:, :1]

    @property
    def proxy_gain(self) -> np.ndarray:
        return self.proxy - self.proxy[:, :1]


@dataclass(frozen=True)
class BestOfN(GainsOverStart):
    """Best-of-n on a set of prompts: per n, the expected gold and proxy reward per prompt (prompts x ns),
    their gains over n = 1 (the policy itself), and both KL measures."""

    ns: list[int]
    gold: np.ndarray
    proxy: np.ndarray
    kl_formula: np.ndarray
    kl_empirical: np.ndarray | None

    @property
    def d(self) -> np.ndarray:
        """sqrt(KL) per n, from the formula (Gao et al.'s axis)."""
        return np.sqrt(self.kl_formula)


def best_of_n(proxy: np.ndarray, gold: np.ndarray, ns: list[int] | None = None,
              completions: list[list[str]] | None = None) -> BestOfN:
    """Expected gold and proxy reward of best-of-n for each prompt (rows) from its pool of N samples (columns),
    exactly, for each n in `ns` (default: every n from 1 to N). `completions` (prompts x N texts), when given,
    adds the empirical KL with identical completions merged.

    >>> proxy = np.array([[0.0, 1.0, 2.0, 3.0]]); gold = np.array([[0.0, 1.0, 2.0, 0.0]])
    >>> result = best_of_n(proxy, gold)
    >>> result.proxy[0].round(3).tolist(), result.gold[0].round(3).tolist()  # proxy rises; gold peaks, falls
    ([1.5, 2.333, 2.75, 3.0], [0.75, 0.833, 0.5, 0.0])
    """
    proxy, gold = np.atleast_2d(np.asarray(proxy, dtype=float)), np.atleast_2d(np.asarray(gold, dtype=float))
    if proxy.shape != gold.shape:
        raise ValueError(f"proxy and gold rewards must have one shape (prompts x samples); got {proxy.shape} "
                         f"and {gold.shape}")
    size = proxy.shape[1]
    ns = list(ns or range(1, size + 1))
    expected_gold = np.empty((proxy.shape[0], len(ns)))
    expected_proxy = np.empty_like(expected_gold)
    kl_empirical = np.empty_like(expected_gold) if completions is not None else None
    for row in range(proxy.shape[0]):
        for column, n in enumerate(ns):
            p = selection_probabilities(proxy[row], n)
            expected_gold[row, column] = p @ gold[row]
            expected_proxy[row, column] = p @ proxy[row]
            if kl_empirical is not None:
                kl_empirical[row, column] = empirical_kl_best_of_n(p, completions[row])
    return BestOfN(ns, expected_gold, expected_proxy, np.array([kl_best_of_n(n) for n in ns]), kl_empirical)


def kl_best_of_n(n: int) -> float:
    """KL(best-of-n || policy) = log n - (n - 1) / n, exact for distinct samples and an upper bound otherwise.

    >>> [round(kl_best_of_n(n), 3) for n in (1, 4, 16, 64)]
    [0.0, 0.636, 1.835, 3.175]
    """
    return math.log(n) - (n - 1) / n


def empirical_kl_best_of_n(selection: np.ndarray, texts: list[str]) -> float:
    """KL of one prompt's best-of-n selection to the policy on the pool's empirical distribution, samples with
    one text merged: the policy puts count/N on a text, best-of-n the sum of its samples' selection
    probabilities. Subsets of a finite pool are drawn without replacement, so for distinct texts this sits
    slightly above the formula (64 samples, n = 4: 0.66 against 0.64) and meets it as the pool grows; repeats
    pull it below.

    >>> round(empirical_kl_best_of_n(selection_probabilities(np.arange(4.0), 4), list("abcd")), 3)  # log 4
    1.386
    >>> empirical_kl_best_of_n(selection_probabilities(np.arange(4.0), 4), list("aaaa"))  # one text: no change
    0.0
    """
    mass: dict[str, list[float]] = {}
    for p, text in zip(selection, texts):
        entry = mass.setdefault(text, [0.0, 0.0])
        entry[0] += p
        entry[1] += 1.0 / len(texts)
    return float(sum(p * math.log(p / q) for p, q in mass.values() if p > 0))


# --- Gao et al.'s functional forms -----------------------------------------------------------------------

@dataclass(frozen=True)
class Overoptimization:
    """A fitted curve R(d) of one form (`best_of_n` or `rl`), its coefficients and peak, with intervals."""

    form: str
    alpha: Interval
    beta: Interval
    peak_d: Interval  # d* where the gold reward is highest (nan when beta <= 0: no peak)
    peak_reward: Interval
    r_squared: float
    n_points: int

    def to_json(self) -> dict:
        return asdict(self)

    def curve(self, d: np.ndarray) -> np.ndarray:
        return reward_curve(self.form, self.alpha.estimate, self.beta.estimate, d)


FORMS = ("best_of_n", "rl")


def reward_curve(form: str, alpha: float, beta: float, d: np.ndarray) -> np.ndarray:
    """Gao et al.'s R(d): d (alpha - beta d) for best-of-n, d (alpha - beta log d) for RL (0 at d = 0).

    >>> reward_curve("best_of_n", 1.0, 0.5, np.array([0.0, 1.0, 2.0])).tolist()
    [0.0, 0.5, 0.0]
    """
    d = np.asarray(d, dtype=float)
    if form == "best_of_n":
        return d * (alpha - beta * d)
    if form == "rl":
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(d > 0, d * (alpha - beta * np.log(np.where(d > 0, d, 1.0))), 0.0)
    raise ValueError(f"unknown overoptimization form {form!r}: use one of {', '.join(FORMS)}")


def _design(form: str, d: np.ndarray) -> np.ndarray:
    """Columns multiplying (alpha, beta): R = alpha * d - beta * d^2 (best-of-n) or - beta * d log d (RL)."""
    d = np.asarray(d, dtype=float)
    second = d ** 2 if form == "best_of_n" else np.where(d > 0, d * np.log(np.where(d > 0, d, 1.0)), 0.0)
    return np.column_stack([d, -second])


def _least_squares(form: str, d: np.ndarray, reward: np.ndarray) -> np.ndarray:
    coefficients, *_ = np.linalg.lstsq(_design(form, d), reward, rcond=None)
    return coefficients


def peak(form: str, alpha: float, beta: float) -> tuple[float, float]:
    """(d*, R(d*)): best-of-n d* = alpha / (2 beta); RL d* = exp(alpha / beta - 1). No peak (nan) when beta <= 0.

    >>> peak("best_of_n", 1.0, 0.25), tuple(round(x, 3) for x in peak("rl", 1.0, 0.5))
    ((2.0, 1.0), (2.718, 1.359))
    """
    if not beta > 0:
        return math.nan, math.nan
    d = alpha / (2 * beta) if form == "best_of_n" else math.exp(alpha / beta - 1)
    return d, float(reward_curve(form, alpha, beta, np.array([d]))[0])


def fit_overoptimization(form: str, d: np.ndarray, rewards: np.ndarray, confidence: float = 0.95,
                         n_resamples: int = 2000, seed: int = 0) -> Overoptimization:
    """Fit R(d) to per-prompt gold-reward gains (prompts x points; d per point, shared by every prompt), with
    percentile intervals from resampling the prompts. Points at d = 0 pin nothing (R(0) = 0) and are kept.

    >>> d = np.sqrt([kl_best_of_n(n) for n in (1, 2, 4, 8, 16, 32, 64)])
    >>> rewards = reward_curve("best_of_n", 0.8, 0.3, d)[None, :] + np.random.default_rng(0).normal(0, .05, (200, 7))
    >>> fit = fit_overoptimization("best_of_n", d, rewards)
    >>> round(fit.alpha.estimate, 2), round(fit.beta.estimate, 2), fit.alpha.covers(0.8), fit.beta.covers(0.3)
    (0.8, 0.3, True, True)
    """
    if form not in FORMS:
        raise ValueError(f"unknown overoptimization form {form!r}: use one of {', '.join(FORMS)}")
    d = np.asarray(d, dtype=float)
    rewards = np.atleast_2d(np.asarray(rewards, dtype=float))
    if rewards.shape[1] != d.size:
        raise ValueError(f"rewards need one column per d value: {rewards.shape[1]} columns, {d.size} d values")
    if np.count_nonzero(d > 0) < 2:
        raise ValueError("fitting two coefficients needs at least two points with d > 0")
    mean = rewards.mean(axis=0)
    alpha, beta = _least_squares(form, d, mean)
    fitted = reward_curve(form, alpha, beta, d)
    total = float(((mean - mean.mean()) ** 2).sum())
    r_squared = 1.0 - float(((mean - fitted) ** 2).sum()) / total if total > 0 else math.nan
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, rewards.shape[0], size=(n_resamples, rewards.shape[0]))
    replicate_means = rewards[draws].mean(axis=1)  # resamples x points
    coefficients = np.linalg.lstsq(_design(form, d), replicate_means.T, rcond=None)[0]  # 2 x resamples
    peaks = np.array([peak(form, a, b) for a, b in coefficients.T])
    estimate_peak = peak(form, alpha, beta)
    return Overoptimization(
        form=form,
        alpha=percentile_interval(float(alpha), coefficients[0], confidence),
        beta=percentile_interval(float(beta), coefficients[1], confidence),
        peak_d=percentile_interval(estimate_peak[0], peaks[:, 0], confidence),
        peak_reward=percentile_interval(estimate_peak[1], peaks[:, 1], confidence),
        r_squared=r_squared, n_points=int(d.size))
