"""The study's design, simulated: what the calibration test and `benchmarks/calibration.py` check intervals on.

Each simulated study has one base model scored once on a fixed set of held-out items, and S training
seeds of one recipe variant scored on the same items; a seed shifts the trained model as a whole (a
seed effect, none to large). An interval means what it says when it covers the *expected* gain (over
items and seeds) at its nominal rate. Binary items are accuracy-like (the base and every trained seed
right or wrong on each item, item difficulty shared by all); continuous ones are NLL-like; sampled ones are a
judged win rate's (`evals/judge.py`): each model samples `SAMPLES` replies per prompt, each wins or loses, and a
prompt's score is the fraction won, so per-item scores are fractional and carry sampling noise of their own;
length-controlled ones are the length-controlled win rate's (`evals/length_control.py`): the judge favours longer
replies, training lengthens them, and a prompt's score is its pseudo-value of the rate fitted to every sample.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from functools import cached_property
from typing import Callable

import numpy as np
from scipy import optimize, special

from align_proxy.evals.length_control import _fit_at_zero, per_prompt_values
from align_proxy.studies.stats import Interval, mean_interval

# Binary items: logit of the base model's chance on an item of difficulty d ~ N(0, DIFFICULTY^2).
BASE_LOGIT = -1.0
DIFFICULTY = 1.5
# How unevenly training helps items (the same for every seed): items are shared beyond their difficulty.
LEARNABILITY = 0.8
# Sampled items: replies judged per prompt (a judged study's --eval_num_samples).
SAMPLES = 4
# Length-controlled items: a reply's length difference from the reference is standard normal (training adds
# LENGTHEN), and the judge's log-odds of preferring it rise LENGTH_BIAS per unit of it: a judge that favours length.
LENGTH_BIAS = 1.0
LENGTHEN = 0.5


@dataclass(frozen=True)
class Design:
    """One simulated study design; `seed_sd` is the seed effect (logit units for binary, raw for continuous)."""

    metric: str  # "binary", "continuous", "sampled" or "length_controlled"
    n_seeds: int
    seed_sd: float
    gain: float  # the true expected gain over items and seeds
    n_items: int = 200

    @cached_property  # a root find over a quadrature: once per design, not once per simulated study
    def shift(self) -> float:
        """The recipe's effect that makes the expected gain `gain` (binary: a logit shift, solved for)."""
        if self.metric == "continuous":
            return self.gain
        if self.metric == "length_controlled":
            return _length_controlled_shift(self.seed_sd, self.gain)
        return float(optimize.brentq(lambda e: _binary_gain(e, self.seed_sd) - self.gain, -10.0, 10.0, xtol=1e-12))

    def simulate(self, rng: np.random.Generator) -> list[np.ndarray]:
        """Per-seed per-item gains of one simulated study: one base evaluation, S seeds on the same items."""
        n, s, shift = self.n_items, self.n_seeds, self.shift
        seed = rng.normal(0.0, self.seed_sd, s)
        if self.metric == "continuous":
            item = rng.normal(0.0, 1.0, n)  # item difficulty, shared by the base and every seed
            base = 2.0 + item + rng.normal(0.0, 0.3, n)
            item_gain = rng.normal(0.0, 0.4, n)  # items gain unevenly, the same way for every seed
            trained = base[None, :] + shift + item_gain[None, :] + seed[:, None] + rng.normal(0.0, 0.3, (s, n))
            return list(trained - base[None, :])
        d = rng.normal(0.0, DIFFICULTY, n)
        u = rng.normal(0.0, LEARNABILITY, n)
        if self.metric == "length_controlled":
            return _length_controlled_study(d, u, shift + seed, rng)
        p_base = special.expit(BASE_LOGIT + d)
        p = special.expit(BASE_LOGIT + d[None, :] + u[None, :] + shift + seed[:, None])
        if self.metric == "sampled":  # the fraction of SAMPLES replies that win, per prompt (expected: p)
            base, trained = rng.binomial(SAMPLES, p_base) / SAMPLES, rng.binomial(SAMPLES, p) / SAMPLES
        else:
            base, trained = (rng.random(n) < p_base).astype(float), (rng.random((s, n)) < p).astype(float)
        return list(trained - base[None, :])


def _binary_gain(shift: float, seed_sd: float) -> float:
    """Expected binary gain over items and seeds, by Gauss-Hermite quadrature (the logits are sums of normals)."""
    x, w = np.polynomial.hermite_e.hermegauss(120)
    w = w / w.sum()
    spread = np.sqrt(DIFFICULTY ** 2 + LEARNABILITY ** 2 + seed_sd ** 2)
    trained = float((w * special.expit(BASE_LOGIT + shift + spread * x)).sum())
    base = float((w * special.expit(BASE_LOGIT + DIFFICULTY * x)).sum())
    return trained - base


def _length_controlled_study(d: np.ndarray, u: np.ndarray, shifts: np.ndarray, rng: np.random.Generator) -> list:
    """Per-seed per-prompt gains in the length-controlled win rate's pseudo-values: the base samples once, each seed
    (its shift in `shifts`) samples its own replies, longer by LENGTHEN, on the same prompts."""
    n = len(d)
    base_length = rng.normal(0.0, 1.0, (n, SAMPLES))
    base_wins = rng.random((n, SAMPLES)) < special.expit(BASE_LOGIT + d[:, None] + LENGTH_BIAS * base_length)
    base = per_prompt_values(base_wins.astype(float), base_length)
    gains = []
    for shift in shifts:
        length = rng.normal(LENGTHEN, 1.0, (n, SAMPLES))
        wins = rng.random((n, SAMPLES)) < special.expit(BASE_LOGIT + (d + u + shift)[:, None] + LENGTH_BIAS * length)
        gains.append(per_prompt_values(wins.astype(float), length) - base)
    return gains


@functools.lru_cache(maxsize=None)  # a root find over population fits: once per seed effect and gain
def _length_controlled_shift(seed_sd: float, gain: float) -> float:
    return float(optimize.brentq(lambda e: _length_controlled_gain(e, seed_sd) - gain, -3.0, 3.0, xtol=1e-5))


def _length_controlled_gain(shift: float, seed_sd: float, prompts: int = 20_000) -> float:
    """The expected gain in the length-controlled win rate: the rate the estimator converges to per seed (its logistic
    fit on a population of prompts, with expected wins in place of drawn ones), averaged over the seed effect by
    Gauss-Hermite quadrature, less the base's. Common random numbers keep it smooth in `shift` for the root find."""
    rng = np.random.default_rng(20_240_101)
    d, u = rng.normal(0.0, DIFFICULTY, prompts), rng.normal(0.0, LEARNABILITY, prompts)
    base_length, length = rng.normal(0.0, 1.0, (prompts, SAMPLES)), rng.normal(LENGTHEN, 1.0, (prompts, SAMPLES))
    base = _fit_at_zero(special.expit(BASE_LOGIT + d[:, None] + LENGTH_BIAS * base_length).ravel(), base_length.ravel())
    x, w = np.polynomial.hermite_e.hermegauss(8) if seed_sd > 0 else (np.zeros(1), np.ones(1))
    trained = sum(weight * _fit_at_zero(special.expit(BASE_LOGIT + (d + u + shift + seed_sd * z)[:, None]
                                                      + LENGTH_BIAS * length).ravel(), length.ravel())
                  for z, weight in zip(x, w / w.sum()))
    return float(trained - base)


def coverage(design: Design, studies: int, n_resamples: int, seed: int = 0,
             interval: Callable[..., Interval] = mean_interval) -> tuple[float, float]:
    """(coverage, mean interval width) of `interval` over `studies` simulated studies of `design`."""
    rng = np.random.default_rng(seed)
    truth = design.gain
    hits, widths = 0, []
    for i in range(studies):
        iv = interval(design.simulate(rng), n_resamples=n_resamples, seed=i)
        hits += iv.covers(truth)
        widths.append(iv.high - iv.low)
    return hits / studies, float(np.mean(widths))


SEED_SDS = {"binary": (0.0, 0.15, 0.5), "continuous": (0.0, 0.05, 0.3), "sampled": (0.0, 0.15, 0.5),
            "length_controlled": (0.0, 0.15, 0.5)}
GAINS = {"binary": (0.0, 0.1), "continuous": (0.0, 0.2), "sampled": (0.0, 0.1), "length_controlled": (0.0, 0.1)}


def designs(metrics=("binary", "continuous", "sampled", "length_controlled"), seeds=(3, 5)) -> list[Design]:
    return [Design(m, s, sd, e) for m in metrics for s in seeds for sd in SEED_SDS[m] for e in GAINS[m]]


# --- a whole study through `analyse`: the prediction at the target ----------------------------------------

# The default study's ladder (parameters) and target, and its design: 4 seeds, 400 held-out items every rung shares.
LADDER = {"ladder-s": 202_272, "ladder-m": 797_760, "ladder-l": 1_786_464}
TARGET = ("climb-350m", 345_300_000.0)


@dataclass(frozen=True)
class LadderDesign:
    """A binary-metric study across `LADDER` whose true expected gain is `gain` at every rung (so at the target
    too): one base evaluation per rung on items every rung shares (their difficulty is common; how each rung's
    base and its training do on an item is its own), `n_variants` variants with the same truth, seeds as in
    `Design`."""

    gain: float = 0.12
    seed_sd: float = 0.15
    n_seeds: int = 4
    n_items: int = 400
    n_variants: int = 2

    @cached_property  # its shift is a root find: once per design
    def rung(self) -> Design:
        return Design("binary", self.n_seeds, self.seed_sd, self.gain, self.n_items)

    def cells(self, rng: np.random.Generator) -> list:
        from align_proxy.studies.store import CellResult

        one = self.rung
        difficulty = rng.normal(0.0, DIFFICULTY, self.n_items)  # shared by every rung: the same items
        cells = []
        for model, parameters in LADDER.items():
            base = (rng.random(self.n_items) < special.expit(BASE_LOGIT + difficulty)).astype(float)
            for variant in range(self.n_variants):
                learnable = rng.normal(0.0, LEARNABILITY, self.n_items)
                seed_effect = rng.normal(0.0, self.seed_sd, self.n_seeds)
                for seed in range(self.n_seeds):
                    p = special.expit(BASE_LOGIT + difficulty + learnable + one.shift + seed_effect[seed])
                    trained = (rng.random(self.n_items) < p).astype(float)
                    cells.append(CellResult(f"{model}-{variant}-{seed}", model, parameters, "sft", f"v{variant}",
                                            seed, {"task_accuracy": float(base.mean())},
                                            {"task_accuracy": float(trained.mean())},
                                            {"task_accuracy": base.tolist()}, {"task_accuracy": trained.tolist()}))
        return cells


def prediction_coverage(design: LadderDesign, studies: int, n_resamples: int = 500, seed: int = 0) -> dict:
    """Run `analyse` on `studies` simulated studies of `design` and count, at the target: how many state a number
    (a trusted prediction), how many of those cover the truth, and how many say a sure sign (an interval clear of
    zero) that the truth contradicts."""
    from align_proxy.studies.analysis import analyse

    rng = np.random.default_rng(seed)
    stated = covered = wrong_sign = 0
    probabilities = []
    for _ in range(studies):
        analysis = analyse(design.cells(rng), LADDER, {"sft": "task_accuracy"}, target=TARGET,
                           n_resamples=n_resamples)
        prediction = analysis.headline[0].prediction
        probabilities.append(prediction.direction_probability if prediction.direction == "helps" else
                             1.0 - prediction.direction_probability)
        iv = prediction.gain
        wrong_sign += bool(iv.high < 0 if design.gain > 0 else iv.low > 0 if design.gain < 0 else iv.excludes_zero())
        if prediction.trusted:
            stated += 1
            covered += prediction.gain.covers(design.gain)
    return {"studies": studies, "stated": stated, "covered": covered, "wrong_sign": wrong_sign,
            "coverage": covered / stated if stated else math.nan, "p_helps": probabilities}


# --- a learning-rate grid across a ladder: the optimum's path and its prediction at the target ----------------------

@dataclass(frozen=True)
class OptimumDesign:
    """A study whose recipe has a `learning_rate` grid at every rung of `rungs`, with a true improvement curve that
    is a quadratic in log10(learning rate), `height - curvature * (x - x_N)^2`, whose optimum x_N moves as
    `exponent` per decade of parameters (x_N = `optimum_at_smallest` at the smallest rung). Every rung's base is
    scored once on items all rungs share; each grid value's seeds shift its scores together (`seed_sd`); items gain
    unevenly (shared by every cell) and each cell's scores carry their own noise (`noise`)."""

    rungs: tuple[tuple[str, int], ...] = tuple(LADDER.items())
    exponent: float = -0.5
    optimum_at_smallest: float = -2.5  # log10 of the best learning rate at the smallest rung
    grid: tuple[float, ...] = (-4.0, -3.5, -3.0, -2.5, -2.0, -1.5)  # log10 learning rates
    height: float = 0.3
    curvature: float = 0.1  # per (log10 unit)^2
    n_seeds: int = 3
    seed_sd: float = 0.01
    noise: float = 0.3
    n_items: int = 200
    metric: str = "judge_reward"

    def optimum(self, parameters: float) -> float:
        """The true log10 optimum at a size."""
        smallest = min(p for _, p in self.rungs)
        return self.optimum_at_smallest + self.exponent * (math.log10(parameters) - math.log10(smallest))

    def cells(self, rng: np.random.Generator) -> list:
        from align_proxy.studies.store import CellResult

        item_gain = rng.normal(0.0, 0.2, self.n_items)  # shared by every cell: the same items
        cells = []
        for model, parameters in self.rungs:
            base = rng.normal(0.0, 1.0, self.n_items)
            best = self.optimum(parameters)
            for x in self.grid:
                rate = f"{10 ** x:.6g}"
                truth = self.height - self.curvature * (x - best) ** 2
                for seed, shift in enumerate(rng.normal(0.0, self.seed_sd, self.n_seeds)):
                    trained = base + truth + item_gain + shift + rng.normal(0.0, self.noise, self.n_items)
                    cells.append(CellResult(f"{model}-{rate}-{seed}", model, parameters, "sft",
                                            f"learning_rate={rate}", seed, {self.metric: float(base.mean())},
                                            {self.metric: float(trained.mean())}, {self.metric: base.tolist()},
                                            {self.metric: trained.tolist()}))
        return cells

    def analyse(self, rng: np.random.Generator, n_resamples: int = 500):
        from align_proxy.studies.analysis import analyse

        return analyse(self.cells(rng), dict(self.rungs), {"sft": self.metric}, target=TARGET,
                       n_resamples=n_resamples)


def optimum_coverage(design: OptimumDesign, studies: int, n_resamples: int = 300, seed: int = 0) -> dict:
    """How often the predicted optimum's interval at the target covers the true one, over `studies` simulated
    studies of `design` (studies whose rungs locate no optimum are counted apart)."""
    rng = np.random.default_rng(seed)
    truth = 10 ** design.optimum(TARGET[1])
    located = covered = 0
    for _ in range(studies):
        (optimum,) = design.analyse(rng, n_resamples).optima
        if optimum.located:
            located += 1
            covered += optimum.prediction.covers(truth)
    return {"studies": studies, "located": located, "covered": covered,
            "coverage": covered / located if located else math.nan}
