"""The optimum section: where a numeric hyperparameter's best value lies at each rung, how it moves with scale, and
what it should be at the target size.

For each recipe, its headline metric, and each numeric grid key with at least 3 values (separately for each value of
the recipe's other grid keys), at each model:

- the improvement (the gain, signed so larger is better) near the best grid value (it and up to two neighbours each
  side, `_window`) is fitted by a quadratic in the value's log10 (a data-mixture fraction, `mix.*`: in its logit),
  and its argmax is the optimum; the fit is refitted on every joint replicate of the study's one crossed draw (items
  shared by every cell, seeds per run), each replicate at its own best value, so the optimum's interval carries the
  items' and the seeds' noise, correlated across grid values and rungs as the data are;
- an argmax past the grid's edge, or a fit with no interior maximum, is censored at that edge: the estimate reads "at
  or beyond" the edge and the interval is open on that side (`stats.censored_interval`), never a number inside it.

Across rungs, log10(optimum) against log10(parameters) is the study's line across sizes
(`scale.fit_line_across_sizes`: each rung's replicates and the rungs' lack of fit about the line, so three rungs
that happen to line up are not taken for a law). Its slope is the optimum's exponent in parameters (-0.5: the
optimum falls 3.2x per decade); its prediction at the target is the setting to use there. What not adjusting costs
there is read off each replicate: the largest rung's curvature times the squared distance, in log10 units, between
the smallest rung's optimum and the predicted one (the curve's shape at the target is assumed to be the largest
rung's). An optimum that no rung's data locate says what would: a wider grid, or more seeds.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from scipy.special import expit, logit

from align_proxy import metrics
from align_proxy.studies.analysis.study import Study
from align_proxy.studies.record import Record
from align_proxy.studies.scale import fit_line_across_sizes
from align_proxy.studies.stats import Interval, censored_interval, percentile_interval

MIN_VALUES = 3  # a quadratic through fewer points has no curvature to find a maximum by
FACTOR = 2.0  # an optimum is located when its interval spans at most this factor either way
MIXTURE_PREFIX = "mix."  # grid keys of a dataset mixture's fractions, fitted in their logit


@dataclass(frozen=True)
class RungOptimum(Record):
    """One rung's optimum of one key: the grid values measured and their improvements, and the fitted argmax."""

    model: str
    parameters: int
    values: list[float]
    improvements: list[float]  # each value's gain, signed so larger is better
    optimum: Interval  # in the key's own units; an open side is +-inf
    edge: str | None  # "below" or "above": the fit's maximum is at or past that edge of the grid
    censored_share: float  # the replicates whose maximum left the grid
    curvature: float  # the quadratic's coefficient, per (transformed unit)^2: negative when there is a maximum
    quadratic: list[float]  # (a, b, c): improvement = a + b x + c x^2, x the value's log10 (or logit)
    fitted: list[float]  # the grid values the quadratic is fitted to: the best and up to two neighbours each side


@dataclass(frozen=True)
class Optimum(Record):
    """A hyperparameter's optimum across the rungs and its prediction at the target size."""

    recipe: str
    metric: str
    key: str
    fixed: dict  # the recipe's other grid keys, held at these values
    scale: str  # "log10", "logit" or "linear": what the quadratic and the line are fitted in
    rungs: list[RungOptimum]
    located: bool  # at least 3 rungs, and every rung's optimum interval is closed
    not_located_because: str | None  # and what would locate it
    # The line's slope per decade of parameters, in the scale's units: with log10, the optimum's exponent in parameters.
    exponent: Interval | None
    lack_of_fit: float | None
    target: str | None
    target_parameters: float | None
    prediction: Interval | None  # the optimum at the target, in the key's units
    smallest_best: float | None  # the smallest rung's optimum: what a user who does not adjust keeps
    cost_of_keeping: Interval | None  # the improvement that keeping it gives up at the target (<= 0)
    # When the prediction (or, without a target, a rung) spans more than FACTOR either way: the seeds per grid value
    # that would bring it within FACTOR, in words.
    to_narrow: str | None = None


def parse_variant(name: str) -> dict[str, float | str]:
    """A grid variant's settings from its name (`StudyPlan.variants`: `beta=0.1,learning_rate=0.0001`), numbers as
    floats; "default" has none.

    >>> parse_variant("beta=0.1,learning_rate=1e-05"), parse_variant("default")
    ({'beta': 0.1, 'learning_rate': 1e-05}, {})
    """
    settings: dict[str, float | str] = {}
    for part in name.split(",") if "=" in name else ():
        key, _, value = part.partition("=")
        try:
            settings[key] = float(value)
        except ValueError:
            settings[key] = value
    return settings


def optima_section(study: Study, primary: dict[str, str], target: tuple[str, float] | None) -> list[Optimum]:
    """Every optimum the study's grids allow (see the module docstring), for each recipe's headline metric."""
    records = []
    for recipe, metric in primary.items():
        variants = sorted({v for (r, v, _, k) in study.gains if (r, k) == (recipe, metric)})
        settings = {v: parse_variant(v) for v in variants}
        keys = sorted({k for s in settings.values() for k, value in s.items() if isinstance(value, float)})
        for key in keys:
            slices: dict[tuple, dict[float, str]] = defaultdict(dict)
            for variant, s in settings.items():
                if isinstance(s.get(key), float):
                    slices[tuple(sorted((k, v) for k, v in s.items() if k != key))][s[key]] = variant
            for fixed, by_value in slices.items():
                scale = _scale(key, list(by_value))
                if len(by_value) >= MIN_VALUES:
                    records.append(_optimum(study, recipe, metric, key, dict(fixed), scale, by_value, target))
    return records


def _scale(key: str, values: list[float]) -> str:
    """What a key's curve and line are fitted in: a share's logit, a positive value's log10, else the value itself (a
    grid through 0, such as warmup_steps: [0, 10, 50], has no log; its line is then a change per decade)."""
    if key.startswith(MIXTURE_PREFIX) and all(0 < v < 1 for v in values):
        return "logit"
    return "log10" if all(v > 0 for v in values) else "linear"


def _to_unit(values, scale: str):
    values = np.asarray(values, dtype=float)
    return 10.0 ** values if scale == "log10" else expit(values) if scale == "logit" else values


def _from_unit(values, scale: str) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    return np.log10(values) if scale == "log10" else logit(values) if scale == "logit" else values


def _optimum(study: Study, recipe: str, metric: str, key: str, fixed: dict, scale: str, by_value: dict[float, str],
             target: tuple[str, float] | None) -> Optimum:
    grid = sorted(by_value)
    rungs, argmax_rows, curvatures = [], [], []
    for model in study.order:
        improvements = study.improvements(recipe, metric, model)
        # A value whose training diverged has no improvement to fit (-inf): the curve is fitted to the others.
        values = [v for v in grid if by_value[v] in improvements and np.all(np.isfinite(improvements[by_value[v]]))]
        if len(values) < MIN_VALUES:
            continue
        rows = np.column_stack([improvements[by_value[v]] for v in values])  # (1 + replicates) x values
        argmax, coefficients, windows = _argmax(_from_unit(values, scale), rows)
        rungs.append(_rung(model, study, values, rows[0], argmax, coefficients[0], windows[0], scale))
        argmax_rows.append(argmax)
        curvatures.append(coefficients[:, 2])
    record = dict(recipe=recipe, metric=metric, key=key, fixed=fixed, scale=scale, rungs=rungs,
                  target=target[0] if target else None, target_parameters=target[1] if target else None)
    why = _not_located(rungs, scale)
    if why or len(rungs) < 3:
        why = why or f"{len(rungs)} rung(s) with a curve, and a line across sizes needs 3"
        return Optimum(**record, located=False, not_located_because=why, exponent=None, lack_of_fit=None,
                       prediction=None, smallest_best=rungs[0].optimum.estimate if rungs else None,
                       cost_of_keeping=None)
    parameters = [r.parameters for r in rungs]
    # Censored replicates held at the edge they passed: none of them leaves an estimate's interval open (checked
    # above), so they lie in a tail the interval does not read.
    clipped = np.column_stack([np.clip(a, *_from_unit([r.values[0], r.values[-1]], scale))
                               for a, r in zip(argmax_rows, rungs)])
    fit = fit_line_across_sizes(parameters, list(clipped[0]), clipped[1:], target[1] if target else None,
                                study.confidence)
    prediction = cost = narrow = None
    if not target:
        widest = max(rungs, key=lambda r: _spread(r.optimum, scale))
        narrow = _to_narrow(widest.optimum, f"the optimum at {widest.model}", rungs, study, scale)
    else:
        p = fit.prediction
        prediction = Interval(*(float(_to_unit(v, scale)) for v in (p.estimate, p.low, p.high)))
        # What keeping the smallest rung's optimum gives up at the target, replicate by replicate, if the curve
        # there has the largest rung's curvature: c * (x_small - x_target)^2.
        lost = curvatures[-1] * (clipped[:, 0] - np.r_[p.estimate, fit.prediction_draws]) ** 2
        bounds = metrics.metric(metric).bounds
        if bounds and lost[0] <= bounds[0] - bounds[1]:
            cost = None  # the parabola, that far from its top, loses more than the metric can: it says nothing there
        else:
            lost = np.maximum(lost, bounds[0] - bounds[1]) if bounds else lost
            cost = percentile_interval(float(lost[0]), lost[1:], study.confidence)
            if prediction.covers(rungs[0].optimum.estimate):  # keeping it may be best; a squared distance cannot say so
                cost = Interval(cost.estimate, cost.low, 0.0)
        alone = Interval(*(float(_to_unit(v, scale)) for v in (fit.measurement.estimate, fit.measurement.low,
                                                                  fit.measurement.high)))
        narrow = _to_narrow(prediction, f"the prediction at {target[0]}", rungs, study, scale, alone)
    return Optimum(**record, located=True, not_located_because=None, exponent=fit.slope_interval,
                   lack_of_fit=fit.lack_of_fit, prediction=prediction,
                   smallest_best=rungs[0].optimum.estimate, cost_of_keeping=cost, to_narrow=narrow)


def _argmax(x: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's local quadratic in x (`_window`: its best grid value and up to two neighbours each side): its argmax
    (-inf or +inf when at or past the grid's lower or upper edge), its coefficients (rows x (a, b, c)) and each row's
    window (rows x (first, last) index)."""
    n = len(x)
    peak, coefficients, windows = np.empty(len(rows)), np.empty((len(rows), 3)), np.empty((len(rows), 2), int)
    best = np.argmax(rows, axis=1)
    for index in np.unique(best):
        lo, hi = _window(int(index), n)
        chosen = best == index
        design = np.column_stack([np.ones(hi - lo), x[lo:hi], x[lo:hi] ** 2])
        fitted = rows[chosen][:, lo:hi] @ np.linalg.pinv(design).T  # its rows x (a, b, c)
        b, c = fitted[:, 1], fitted[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            top = np.where(c < 0, -b / (2 * c), np.nan)
        # No maximum (a curve bending up): the better end of the window, censored there if that is the grid's edge.
        ends = np.where(design[-1] @ fitted.T >= design[0] @ fitted.T, x[hi - 1], x[lo])
        top = np.where(np.isnan(top), ends, top)
        peak[chosen], coefficients[chosen], windows[chosen] = top, fitted, (lo, hi)
    peak = np.where(peak >= x[-1], np.inf, np.where(peak <= x[0], -np.inf, peak))
    return peak, coefficients, windows


def _window(best: int, n: int) -> tuple[int, int]:
    """The grid values a rung's curve is fitted to, [lo, hi): the best one and up to two neighbours each side, at
    least MIN_VALUES. Over a wide grid a learning rate's curve is not one parabola (it rises slowly and falls off a
    cliff), so a quadratic through every value misplaces the top; near the top it is one, as Taylor says."""
    lo, hi = max(0, best - 2), min(n, best + 3)
    while hi - lo < MIN_VALUES:
        lo, hi = (lo - 1, hi) if lo > 0 else (lo, hi + 1)
    return lo, hi


def _rung(model: str, study: Study, values: list[float], improvements: np.ndarray, argmax: np.ndarray,
          quadratic: np.ndarray, window: np.ndarray, scale: str) -> RungOptimum:
    estimate = float(argmax[0])
    edge = "above" if estimate == math.inf else "below" if estimate == -math.inf else None
    inner = float(np.clip(estimate, *_from_unit([values[0], values[-1]], scale)))
    transformed = censored_interval(inner, argmax[1:], confidence=study.confidence)
    optimum = Interval(*(float(_to_unit(v, scale)) if math.isfinite(v) else v
                         for v in (transformed.estimate, transformed.low, transformed.high)))
    return RungOptimum(model=model, parameters=study.models[model], values=values,
                       improvements=[float(v) for v in improvements], optimum=optimum, edge=edge,
                       censored_share=float(np.mean(~np.isfinite(argmax[1:]))), curvature=float(quadratic[2]),
                       quadratic=[float(v) for v in quadratic], fitted=values[window[0]:window[1]])


def _not_located(rungs: list[RungOptimum], scale: str) -> str | None:
    """Why the rungs' optima do not locate a line, and what would, the grid's edge first; None when they do."""
    for rung in rungs:
        if rung.edge:
            # The next value past the edge, one of the grid's own steps (its ratio; a share's steps in its logit).
            below = rung.edge == "below"
            edge, inner = (rung.values[0], rung.values[1]) if below else (rung.values[-1], rung.values[-2])
            step = float(_to_unit(_from_unit([edge], scale)[0] * 2 - _from_unit([inner], scale)[0], scale))
            following = f" (next: {step:.3g})" if step >= 0 or min(rung.values) < 0 else ""
            return (f"at {rung.model} the best value is at or {rung.edge} the grid's edge, {edge:.3g}: extend the grid "
                    f"{rung.edge} it{following}" if following or not below else
                    f"at {rung.model} the best value is the grid's lowest, {edge:.3g}: its curve there has no top")
    for rung in rungs:
        open_below = not math.isfinite(rung.optimum.low) or (scale != "linear" and rung.optimum.low <= 0)
        if open_below or not math.isfinite(rung.optimum.high):
            side, edge = ("below", rung.values[0]) if open_below else ("above", rung.values[-1])
            return (f"at {rung.model} the optimum's interval is open {side} {edge:.3g} ({rung.censored_share:.0%} of "
                    f"resamples put it past the grid's edge): extend the grid {side} it, or add seeds")
    return None


def _to_narrow(interval: Interval, where: str, rungs: list[RungOptimum], study: Study, scale: str,
               noise_alone: Interval | None = None) -> str | None:
    """What would narrow `interval` to FACTOR either way, None when it already is. Its part from the rungs' noise
    (`noise_alone`, for a prediction: the line refitted on the replicates without its lack of fit) falls as
    1 / sqrt(seeds) (items fixed), so the seeds grow with the square of the ratio; the rest is the line's lack of fit,
    which only more rungs measure."""
    spread = _spread(interval, scale)
    if spread <= FACTOR:
        return None
    if not math.isfinite(spread):
        return f"{where} reaches 0 or below: more seeds, and more rungs, would narrow it"
    noise = _spread(noise_alone, scale) if noise_alone is not None else spread
    said = f"{where} spans {spread:,.0f}x either way"
    if noise <= FACTOR:
        return (f"{said}, though the rungs' noise alone would put it within {noise:.1f}x: the rest is how far the "
                f"rungs may stray from a line, which {len(rungs)} rungs barely measure; more rungs would narrow it")
    seeds = max((g.n_seeds for (_, _, m, _), g in study.gains.items() if m in {r.model for r in rungs}), default=1)
    needed = max(seeds + 1, math.ceil(seeds * (math.log(noise) / math.log(FACTOR)) ** 2))
    seeds_say = f"about {needed} seeds per grid value (now {seeds}) would bring"
    if noise < spread:
        return f"{said}; {seeds_say} its noise within {FACTOR:g}x, and more rungs the rest"
    return f"{said}; {seeds_say} it within {FACTOR:g}x"


def _spread(optimum: Interval, scale: str) -> float:
    """How far the interval reaches either way, as a factor of the estimate (in the logit's odds for a fraction;
    infinite for a linear key's interval that reaches 0)."""
    if scale == "linear":
        low, mid, high = optimum.low, optimum.estimate, optimum.high
        return float(max(high / mid, mid / low)) if low > 0 else math.inf
    low, mid, high = (_from_unit([v], scale)[0] for v in (optimum.low, optimum.estimate, optimum.high))
    return float(10 ** max(mid - low, high - mid) if scale == "log10" else math.exp(max(mid - low, high - mid)))
