"""Reward-model overoptimization (Gao, Schulman and Hilton 2022, arXiv 2210.10760): how far a policy can be
optimised against a proxy reward model before the gold reward falls.

Pure functions over arrays (numpy and scipy, no torch), like `stats`. Best-of-n's expected rewards and KL from
one pool of samples are `best_of_n`'s; here:

- `fit_overoptimization`: Gao et al.'s forms R_bon(d) = d (alpha - beta d) and R_RL(d) = d (alpha - beta log d),
  with d = sqrt(KL) and R the gain over the initial policy (R(0) = 0). Both are linear in (alpha, beta), so
  each is a least-squares fit through the origin; its intervals come from resampling the prompts (the items
  every point of a curve shares), and the peak d* and the gold reward there follow from each replicate.
- `Curve`: one proxy reward model's curve, per prompt, as runs record it, fitted; `peak_shift` compares two.

alpha and beta against reward-model size (the trend a large run needs) is `size_trends`: one point per size,
through `scale.fit_line_across_sizes`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# best_of_n, BestOfN and kl_best_of_n are read from here too (evals.overoptimization, the doctests below).
from align_proxy.studies.best_of_n import BestOfN, GainsOverStart, best_of_n, kl_best_of_n  # noqa: F401
from align_proxy.studies.record import Record
from align_proxy.studies.scale import fit_line_across_sizes
from align_proxy.studies.stats import Interval, censored_interval, percentile_interval


# --- Gao et al.'s functional forms -----------------------------------------------------------------------

@dataclass(frozen=True)
class Overoptimization(Record):
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
class SizeTrend(Record):
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
