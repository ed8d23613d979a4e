"""The length-controlled win rate (Dubois et al. 2024, AlpacaEval 2): a judge that prefers longer replies rewards a
policy for writing more, whatever it writes. Fit a logistic model of the win on the length difference, across
prompts, and read it where the difference is zero: the win rate a reply of the reference's length would have.

The inputs are a judged run's samples (`align_proxy.evals.judge`), prompts by samples: each sample's win against the
reference (1, 0.5 for a tie, 0) and its length minus the reference's, in tokens. The logistic model is fitted to
every sample by maximum likelihood (ties as half outcomes: a quasi-binomial GLM), and the interval resamples prompts
with their samples, the unit the items were drawn in. Fitted to per-prompt means instead, it is biased (the mean of
step functions is not one), and its interval covered a planted truth 90% of the time at 95%; per sample, 94% (100
simulated studies of 60 prompts x 4 samples; tests/test_length_control.py keeps a smaller run of that check).

In a study the rate is one more per-prompt metric (`length_controlled_win_rate`), so its gains get the crossed
intervals every other metric gets, from the same resamples of prompts and seeds. A prompt's value is the fit's
pseudo-value: the estimate plus the prompt's influence on it (the delta method through the logistic fit's score), so
the values' mean is the estimate, and resampling prompts resamples the fit to first order (a jackknife's pseudo-values
agree to a correlation of 0.9999 at 60 prompts). `align_proxy/studies/calibration.py` checks the study's intervals
on it in the study's design.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import expit


@dataclass(frozen=True)
class LengthControlled:
    estimate: float  # the win rate at zero length difference
    low: float
    high: float  # the percentile interval over prompts, at `level`
    raw: float  # the plain win rate, for comparison
    level: float = 0.95


RIDGE = 1e-3  # on the length slope: see _fit


def _fit(wins: np.ndarray, diffs: np.ndarray, iterations: int = 50) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(theta, x, hessian) of the logistic fit logit P(win) = a + b * diff / sd(diff) to wins in [0, 1], by Newton's
    method on the binomial likelihood (what a quasi-binomial GLM maximises); None when the lengths do not vary."""
    scale = diffs.std()
    if scale == 0:
        return None
    x = np.stack([np.ones_like(diffs), diffs / scale], axis=1)
    # A win rate of exactly 0 or 1 at some lengths separates the data and sends the slope to infinity; a small ridge
    # on it keeps the fit finite and changes nothing measurable otherwise.
    ridge = np.diag([0.0, RIDGE])
    theta = np.zeros(2)
    for _ in range(iterations):
        p = expit(x @ theta)
        gradient = x.T @ (wins - p) - ridge @ theta
        hessian = (x * (p * (1 - p))[:, None]).T @ x + ridge
        step = np.linalg.solve(hessian + 1e-9 * np.eye(2), gradient)
        theta += step
        if np.abs(step).max() < 1e-10:
            break
    p = expit(x @ theta)
    return theta, x, (x * (p * (1 - p))[:, None]).T @ x + ridge


def _fit_at_zero(wins: np.ndarray, diffs: np.ndarray) -> float:
    """The fitted win rate at zero length difference: sigmoid(a); with no length variation, the plain win rate."""
    fit = _fit(wins, diffs)
    return float(wins.mean()) if fit is None else float(expit(fit[0][0]))


def per_prompt_values(wins, length_diffs) -> np.ndarray:
    """Each prompt's pseudo-value of the length-controlled win rate (prompts x samples in, one value per prompt out):
    estimate + g'(a) * [n H^-1 U_i]_a, with U_i the prompt's score (its samples' summed gradient, the ridge's share
    included) and H the fit's Hessian, so the values average to the estimate exactly.

    >>> wins = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.5], [1.0, 0.0]])
    >>> diffs = np.array([[3.0, -1.0], [2.0, 4.0], [-2.0, 0.0], [1.0, -3.0]])
    >>> values = per_prompt_values(wins, diffs)
    >>> bool(np.isclose(values.mean(), _fit_at_zero(wins.ravel(), diffs.ravel())))
    True
    """
    wins, diffs = np.asarray(wins, float), np.asarray(length_diffs, float)
    n, k = wins.shape
    fit = _fit(wins.ravel(), diffs.ravel())
    if fit is None:  # no length to control for: the plain win rate, prompt by prompt
        return wins.mean(axis=1)
    theta, x, hessian = fit
    residual = wins.ravel() - expit(x @ theta)
    scores = (x * residual[:, None]).reshape(n, k, 2).sum(axis=1) - np.array([0.0, RIDGE * theta[1]]) / n
    influence = n * scores @ np.linalg.inv(hessian).T
    at_zero = expit(theta[0])
    return at_zero + at_zero * (1 - at_zero) * influence[:, 0]


def length_controlled_win_rate(wins, length_diffs, resamples: int = 1000, level: float = 0.95,
                               seed: int = 0) -> LengthControlled:
    """The length-controlled win rate of sampled replies, `wins` and `length_diffs` given prompts by samples (reply
    minus reference length, in tokens), with a percentile interval from resampling prompts."""
    wins, diffs = np.asarray(wins, float), np.asarray(length_diffs, float)
    if wins.ndim != 2 or wins.shape != diffs.shape or len(wins) < 2:
        raise ValueError(f"win and length arrays of shapes {wins.shape} and {diffs.shape}: give both as prompts x "
                         "samples, for at least two prompts")
    rng = np.random.default_rng(seed)
    draws = [_fit_at_zero(wins[i].ravel(), diffs[i].ravel())
             for i in rng.integers(0, len(wins), size=(resamples, len(wins)))]
    tail = (1 - level) / 2
    low, high = np.quantile(draws, [tail, 1 - tail])
    return LengthControlled(_fit_at_zero(wins.ravel(), diffs.ravel()), float(low), float(high), float(wins.mean()),
                            level)
