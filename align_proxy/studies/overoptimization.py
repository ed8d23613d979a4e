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

alpha and beta against reward-model size (the trend a large run needs) is `size_trends`: one point per size,
through `scale.fit_line_across_sizes`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import special

from align_proxy.studies.scale import fit_line_across_sizes
from align_proxy.studies.stats import Interval, censored_interval, percentile_interval


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
    kl_policy: np.ndarray | None = None  # on the pool's distinct completions, by the policy's own probabilities

    @property
    def d(self) -> np.ndarray:
        """sqrt(KL) per n, from the formula (Gao et al.'s axis)."""
        return np.sqrt(self.kl_formula)


def best_of_n(proxy: np.ndarray, gold: np.ndarray, ns: list[int] | None = None,
              completions: list[list[str]] | None = None, logprobs: np.ndarray | None = None) -> BestOfN:
    """Expected gold and proxy reward of best-of-n for each prompt (rows) from its pool of N samples (columns),
    exactly, for each n in `ns` (default: every n from 1 to N). `completions` (prompts x N texts), when given,
    adds the empirical KL with identical completions merged, and with `logprobs` (prompts x N, the policy's
    log-probability of each sample, at the temperature it sampled at) the KL on the policy's own probabilities of
    the distinct sequences sampled (`kl_best_of_n_on_support`).

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
    kl_policy = np.empty_like(expected_gold) if completions is not None and logprobs is not None else None
    for row in range(proxy.shape[0]):
        if kl_policy is not None:  # one sample per distinct token sequence: its text and its log-probability
            keys = [(text, round(float(lp), 6)) for text, lp in zip(completions[row], logprobs[row])]
            distinct = sorted({key: i for i, key in reversed(list(enumerate(keys)))}.values())
        for column, n in enumerate(ns):
            p = selection_probabilities(proxy[row], n)
            expected_gold[row, column] = p @ gold[row]
            expected_proxy[row, column] = p @ proxy[row]
            if kl_empirical is not None:
                kl_empirical[row, column] = empirical_kl_best_of_n(p, completions[row])
            if kl_policy is not None:
                kl_policy[row, column] = kl_best_of_n_on_support(proxy[row, distinct], logprobs[row, distinct], n)
    return BestOfN(ns, expected_gold, expected_proxy, np.array([kl_best_of_n(n) for n in ns]), kl_empirical,
                   kl_policy)


def kl_best_of_n(n: int) -> float:
    """KL(best-of-n || policy) = log n - (n - 1) / n, exact for distinct samples and an upper bound otherwise.

    >>> [round(kl_best_of_n(n), 3) for n in (1, 4, 16, 64)]
    [0.0, 0.636, 1.835, 3.175]
    """
    return math.log(n) - (n - 1) / n


def kl_best_of_n_on_support(proxy: np.ndarray, logprobs: np.ndarray, n: int) -> float:
    """KL(best-of-n || policy), exact, for a policy whose outputs are these distinct completions with probabilities
    from its log-probabilities (renormalised over them: the pool's support, where a small model puts most of its
    mass). Best-of-n of a discrete distribution puts F_hi^n - F_lo^n on the completions tied at one proxy score
    (F the policy's CDF in proxy order), shared among them in proportion to the policy (the tied samples are
    exchangeable), so KL = sum over score groups of P log(P / pi). Unlike the formula, it sees that a policy
    which concentrates on a few completions cannot be moved far by picking among them.

    >>> round(kl_best_of_n_on_support(np.arange(1000.0), np.zeros(1000), 4), 3)  # many equal completions: the formula
    0.636
    >>> kl_best_of_n_on_support(np.array([0.0, 1.0]), np.log([0.99, 0.01]), 4) < kl_best_of_n(4)
    True
    """
    proxy, logprobs = np.asarray(proxy, dtype=float), np.asarray(logprobs, dtype=float)
    probability = np.exp(logprobs - logprobs.max())
    probability /= probability.sum()
    scores, group = np.unique(proxy, return_inverse=True)  # score groups, lowest first
    mass = np.bincount(group, weights=probability, minlength=scores.size)
    cdf_high = np.minimum(np.cumsum(mass), 1.0)
    cdf_low = np.concatenate([[0.0], cdf_high[:-1]])
    chosen = cdf_high ** n - cdf_low ** n
    kept = chosen > 0
    return float(max(np.sum(chosen[kept] * np.log(chosen[kept] / mass[kept])), 0.0))


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
    peak_d: Interval  # d* where the gold gain is highest within the data; high inf: the data do not bound it
    peak_reward: Interval
    r_squared: float
    n_points: int
    d_max: float  # the largest d measured: a peak past it is censored there
    beyond_data: float  # the share of prompt resamples whose fit still rises at d_max (peak past the data)

    def to_json(self) -> dict:
        return asdict(self)

    def curve(self, d: np.ndarray) -> np.ndarray:
        return reward_curve(self.form, self.alpha.estimate, self.beta.estimate, d)


FORMS = ("best_of_n", "rl")


def form_label(form: str) -> str:
    """How a report names a form: `best-of-n` or `RL`."""
    return "best-of-n" if form == "best_of_n" else "RL"


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


def peak(form: str, alpha: float, beta: float, d_max: float | None = None) -> tuple[float, float]:
    """(d*, R(d*)), where the fitted gold gain is highest. Without `d_max`, over all d >= 0: best-of-n
    d* = alpha / (2 beta), 0 when that is negative (the gold reward falls from the start); RL d* = exp(alpha / beta
    - 1); with beta <= 0 the form never turns down (nan: no peak) unless it is flat or falling (beta = 0, alpha <= 0:
    d* = 0). With `d_max`, the largest d measured, over [0, d_max] only: the fit says nothing past its data, so a
    curve still rising at d_max has no peak (nan), and one whose gain is below zero throughout peaks at d* = 0.

    >>> peak("best_of_n", 1.0, 0.25), tuple(round(x, 3) for x in peak("rl", 1.0, 0.5))
    ((2.0, 1.0), (2.718, 1.359))
    >>> peak("best_of_n", -0.1, 0.25), peak("best_of_n", 0.1, -0.25)  # falls from the start; never turns down
    ((0.0, 0.0), (nan, nan))
    >>> peak("rl", -0.07, -0.03, d_max=4.0), peak("best_of_n", 1.0, 0.25, d_max=1.5)  # falls; still rising at 1.5
    ((0.0, 0.0), (nan, nan))
    """
    if beta > 0:
        d = max(alpha / (2 * beta), 0.0) if form == "best_of_n" else math.exp(alpha / beta - 1)
    elif beta == 0 and alpha <= 0:
        d = 0.0
    else:
        d = math.nan
    if d_max is not None:
        candidates = np.array([0.0, d_max, *([d] if 0 < d < d_max else [])])
        values = reward_curve(form, alpha, beta, candidates)
        d = float(candidates[int(np.argmax(values))])
        rising = reward_curve(form, alpha, beta, np.array([d_max * (1 - 1e-6)]))[0] < values[1]
        if d == d_max and rising:
            return math.nan, math.nan
    if math.isnan(d):
        return math.nan, math.nan
    return d, float(reward_curve(form, alpha, beta, np.array([d]))[0]) + 0.0  # + 0.0: no -0.0 at d* = 0


def _prompt_draws(prompts: int, n_resamples: int, seed: int) -> np.ndarray:
    """Bootstrap draws of prompt indices (resamples x prompts): the same seed gives the same draws."""
    return np.random.default_rng(seed).integers(0, prompts, size=(n_resamples, prompts))


def _resampled_fits(form: str, d: np.ndarray, rewards: np.ndarray, draws: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(alpha, beta) per resample of the prompts (2 x resamples) and each fit's (d*, R(d*)) within the data
    (resamples x 2). A fit still rising at the largest d has its peak somewhere past it, which the form cannot
    place from these points: inf, censored (`stats.censored_interval`), not a failed fit."""
    replicate_means = rewards[draws].mean(axis=1)  # resamples x points
    coefficients = np.linalg.lstsq(_design(form, d), replicate_means.T, rcond=None)[0]
    d_max = float(d.max())
    peaks = np.array([peak(form, a, b, d_max) for a, b in coefficients.T])
    return coefficients, np.where(np.isnan(peaks), math.inf, peaks)


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
    coefficients, peaks = _resampled_fits(form, d, rewards, _prompt_draws(rewards.shape[0], n_resamples, seed))
    estimate_peak = peak(form, alpha, beta, float(d.max()))
    return Overoptimization(
        form=form,
        alpha=percentile_interval(float(alpha), coefficients[0], confidence),
        beta=percentile_interval(float(beta), coefficients[1], confidence),
        peak_d=censored_interval(estimate_peak[0], peaks[:, 0], confidence=confidence),
        peak_reward=censored_interval(estimate_peak[1], peaks[:, 1], confidence=confidence),
        r_squared=r_squared, n_points=int(d.size), d_max=float(d.max()),
        beyond_data=float(np.isinf(peaks[:, 0]).mean()))


# --- curves, as runs record them and a report reads them -----------------------------------------------------

@dataclass(frozen=True)
class Curve(GainsOverStart):
    """One proxy reward model's curve: gold and proxy reward per prompt (prompts x points) at each point's d, for
    best-of-n (points are n; d from the formula) or an RL run (points are optimiser steps; d measured), and the
    form fitted to the gold gain (None when fewer than two points have d > 0)."""

    form: str
    reward_model: str
    parameters: int
    x: list[int]
    d: np.ndarray
    gold: np.ndarray
    proxy: np.ndarray
    kl_measured: np.ndarray | None  # best-of-n: the pool's KL, repeats merged; RL: the run's own KL estimate
    fit: Overoptimization | None
    kl_policy: np.ndarray | None = None  # best-of-n: on the pool's completions, the policy's own probabilities

    @property
    def form_label(self) -> str:
        return form_label(self.form)

    @classmethod
    def from_points(cls, points: list[dict], reward_model: str, parameters: int, confidence: float = 0.95,
                    n_resamples: int = 2000) -> Curve:
        """A curve from its points (`points()`, or an RL run's `train.curve`), fitted."""
        if len(points) < 2 or any("gold_reward" not in p.get("items", {}) for p in points):
            raise ValueError(f"{reward_model}: a curve needs at least 2 points, each with per-prompt gold reward")
        form = "best_of_n" if "n" in points[0] else "rl"
        kl = np.array([p["kl"] if form == "best_of_n" else p["kl_to_reference"] for p in points], dtype=float)
        measured = [p.get("kl_measured") for p in points] if form == "best_of_n" else list(kl)
        policy = [p.get("kl_policy") for p in points]
        gold = np.array([p["items"]["gold_reward"] for p in points], dtype=float).T  # prompts x points
        proxy = np.array([p["items"]["proxy_reward"] for p in points], dtype=float).T
        d = np.sqrt(np.clip(kl, 0.0, None))  # a sampled KL can dip below 0 near the start
        x = [int(p["n" if form == "best_of_n" else "step"]) for p in points]
        as_array = lambda values: None if None in values else np.array(values, dtype=float)  # noqa: E731
        return cls.fitted(form, reward_model, parameters, x, d, gold, proxy, as_array(measured), confidence,
                          n_resamples, as_array(policy))

    @classmethod
    def of_best_of_n(cls, result: BestOfN, reward_model: str, parameters: int, confidence: float = 0.95,
                     n_resamples: int = 2000) -> Curve:
        """A reward model's best-of-n curve on one pool (`best_of_n`), d from the formula, fitted."""
        measured = result.kl_empirical.mean(axis=0) if result.kl_empirical is not None else None
        policy = result.kl_policy.mean(axis=0) if result.kl_policy is not None else None
        return cls.fitted("best_of_n", reward_model, parameters, list(result.ns), result.d, result.gold, result.proxy,
                          measured, confidence, n_resamples, policy)

    @classmethod
    def fitted(cls, form: str, reward_model: str, parameters: int, x: list[int], d: np.ndarray, gold: np.ndarray,
               proxy: np.ndarray, kl_measured: np.ndarray | None, confidence: float, n_resamples: int,
               kl_policy: np.ndarray | None = None) -> Curve:
        fit = (fit_overoptimization(form, d, gold - gold[:, :1], confidence, n_resamples)
               if np.count_nonzero(d > 0) >= 2 else None)
        return cls(form, reward_model, int(parameters), x, d, gold, proxy, kl_measured, fit, kl_policy)

    def points(self) -> list[dict]:
        """The curve's points in the layout `from_points` reads (what metrics.json's `train.curve` holds)."""
        out = []
        for i, x in enumerate(self.x):
            kl = float(self.d[i] ** 2)
            if self.form == "best_of_n":
                head = {"n": x, "kl": kl, **{name: float(values[i]) if values is not None else None for name, values in
                                            (("kl_measured", self.kl_measured), ("kl_policy", self.kl_policy))}}
            else:
                head = {"step": x, "kl_to_reference": kl}
            out.append({**head, "sqrt_kl": float(self.d[i]),
                        "items": {"gold_reward": self.gold[:, i].tolist(), "proxy_reward": self.proxy[:, i].tolist()}})
        return out


def peak_shift(small: Curve, large: Curve, confidence: float = 0.95, n_resamples: int = 2000,
               seed: int = 0) -> Interval:
    """d* of the larger reward model's curve minus the smaller's, with a percentile interval from resampling the
    prompts both curves share (the same draw for both, so what the prompts do to both cancels). Curves of one
    best-of-n pool share prompts and samples; RL runs share prompts only, and their training-run spread is not in
    the interval. A resample in which one curve still rises at the last point bounds the shift on one side only
    (its peak is past the data), and one in which both do bounds it on neither (`stats.censored_interval`). nan
    where either fit has no peak in the estimate."""
    if small.form != large.form or small.gold.shape != large.gold.shape or small.d.shape != large.d.shape:
        raise ValueError("a peak shift compares two curves of one form on the same prompts and points")
    draws = _prompt_draws(small.gold.shape[0], n_resamples, seed)
    peaks = [_resampled_fits(c.form, c.d, c.gold_gain, draws)[1][:, 0] for c in (small, large)]
    estimate = (large.fit.peak_d.estimate - small.fit.peak_d.estimate) if small.fit and large.fit else math.nan
    with np.errstate(invalid="ignore"):
        shift = peaks[1] - peaks[0]  # inf - inf: both past the data, the shift unknown in sign
    both_beyond = np.isnan(shift)
    return censored_interval(estimate, np.where(both_beyond, -math.inf, shift), np.where(both_beyond, math.inf, shift),
                             confidence)


def prompts_to_resolve(difference: Interval, prompts: int) -> int | None:
    """Roughly how many prompts would put an unresolved difference's interval clear of 0, were its estimate the
    truth: an interval's width shrinks as 1/sqrt(prompts). None when it is resolved or undefined."""
    half = (difference.high - difference.low) / 2
    if not (math.isfinite(half) and math.isfinite(difference.estimate)) or difference.excludes_zero() or \
            difference.estimate == 0:
        return None
    return int(math.ceil(prompts * (half / abs(difference.estimate)) ** 2))


@dataclass(frozen=True)
class SizeTrend:
    """One coefficient of one form against reward-model size: its mean over each size's curves, and the straight
    line through them on log10(parameters), Gao et al.'s roughly log-linear trend. The slope's interval is
    `scale.fit_line_across_sizes`': the line refitted on every resample of the prompts (one draw for every curve,
    so curves of one pool stay paired), plus the sizes' scatter beyond that (a reward model's training seed, lack
    of fit). With 3 sizes it is wide."""

    form: str
    coefficient: str  # "alpha" or "beta"
    parameters: list[int]
    values: list[float]
    slope_per_decade: Interval
    intercept: float
    r_squared: float
    lack_of_fit: float

    def to_json(self) -> dict:
        return asdict(self)


def size_trends(curves: list[Curve], confidence: float = 0.95, n_resamples: int = 2000,
                seed: int = 0) -> list[SizeTrend]:
    """alpha and beta against size, per form with fitted curves at 3 or more sizes (several curves of one size,
    e.g. reward models of several seeds, are averaged into its one point, in every resample too)."""
    out = []
    for form in dict.fromkeys(c.form for c in curves):
        by_size: dict[int, list[Curve]] = {}
        for curve in (c for c in curves if c.form == form and c.fit is not None):
            by_size.setdefault(curve.parameters, []).append(curve)
        if len(by_size) < 3:
            continue
        sizes = sorted(by_size)
        # (2 x resamples) coefficients per curve; the same prompt draws for curves with the same prompts.
        resampled = {id(c): _resampled_fits(c.form, c.d, c.gold_gain, _prompt_draws(c.gold.shape[0], n_resamples,
                                                                                       seed))[0]
                     for s in sizes for c in by_size[s]}
        for row, name in enumerate(("alpha", "beta")):
            values = [float(np.mean([getattr(c.fit, name).estimate for c in by_size[s]])) for s in sizes]
            replicates = np.column_stack([np.mean([resampled[id(c)][row] for c in by_size[s]], axis=0)
                                          for s in sizes])
            line = fit_line_across_sizes(sizes, values, replicates, confidence=confidence)
            out.append(SizeTrend(form, name, sizes, values, line.slope_interval, line.intercept, line.r_squared,
                                 line.lack_of_fit))
    return out
