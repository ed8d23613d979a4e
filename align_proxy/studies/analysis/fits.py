"""The fit section: gain against log10(parameters) per recipe variant and metric, refitted on every replicate
of the gains (`scale.fit_line_across_sizes`), and what it says at the study's target size (`Prediction`)."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, replace

import numpy as np

from align_proxy import metrics
from align_proxy.studies.analysis.study import Study
from align_proxy.studies.record import Record
from align_proxy.studies.scale import fit_line_across_sizes
from align_proxy.studies.stats import Interval
from align_proxy.studies.verdicts import FAR_EXTRAPOLATION, LACK_OF_FIT_WIDENING, higher_is_better, verdict


@dataclass(frozen=True)
class Fit(Record):
    """gain ~ log10(parameters) for one recipe variant and metric, one point per model, and its prediction at
    the study's target size (None without a target), sized by `scale.fit_line_across_sizes`."""

    recipe: str
    variant: str
    metric: str
    points: list[tuple[int, float]]
    slope: float
    slope_interval: Interval
    intercept: float
    r_squared: float
    n_points: int
    degrees_of_freedom: int
    lack_of_fit: float  # the points' scatter about the line beyond their measurement noise (scale.py)
    target: str | None
    target_parameters: float | None
    extrapolation_factor: float | None
    prediction: Interval | None  # measurement and lack of fit together: the interval the report quotes
    measurement: Interval | None  # the line refitted on every replicate of the points, alone
    probability_positive: float | None
    prediction_trusted: bool | None


@dataclass(frozen=True)
class Prediction(Record):
    """The headline's word at the target size: a number when trusted, else a direction and its probability."""

    target: str
    target_parameters: float
    variant: str
    gain: Interval
    extrapolation_factor: float
    verdict: str
    direction: str
    direction_probability: float
    trusted: bool
    untrusted_because: str | None
    beyond_range: bool


def fit_section(study: Study, target: tuple[str, float] | None) -> list[Fit]:
    """gain ~ log10(parameters) per recipe variant and metric over each model's mean gain (>= 3 models), refitted on
    every joint replicate of the gains (`scale.fit_line_across_sizes`)."""
    points: dict[tuple, list[tuple[int, float, np.ndarray]]] = defaultdict(list)
    for (recipe, variant, model, metric), q in study.quantities.items():
        if study.gains[(recipe, variant, model, metric)].verdict != "diverges":
            points[(recipe, variant, metric)].append((study.models[model], float(q.gain.mean()), q.gain_replicates))
    records = []
    for (recipe, variant, metric), pts in points.items():
        pts = sorted(pts, key=lambda p: p[0])
        params = [p for p, _, _ in pts]
        if len(set(params)) < 3 or len(set(params)) != len(params) or min(params) <= 0:
            continue  # a model of unknown size (0) has no place on the axis
        fit = fit_line_across_sizes(params, [g for _, g, _ in pts], np.column_stack([r for _, _, r in pts]),
                                    target[1] if target else None, study.confidence)
        factor = target[1] / max(params) if target else None
        record = Fit(recipe=recipe, variant=variant, metric=metric, points=[(p, g) for p, g, _ in pts],
                     slope=fit.slope, slope_interval=fit.slope_interval,
                     intercept=fit.intercept, r_squared=fit.r_squared,
                     n_points=fit.n_points, degrees_of_freedom=fit.degrees_of_freedom, lack_of_fit=fit.lack_of_fit,
                     target=target[0] if target else None, target_parameters=target[1] if target else None,
                     extrapolation_factor=factor, prediction=fit.prediction, measurement=fit.measurement,
                     probability_positive=fit.probability_positive, prediction_trusted=None)
        if target:
            record = replace(record, prediction_trusted=prediction(record, metric).trusted)
        records.append(record)
    return records


def _width(interval: Interval) -> float:
    return interval.high - interval.low


def _leaves_reachable_gains(interval: Interval, metric: str) -> bool:
    """Whether the interval leaves the gains the metric's bounds allow (`metrics.Metric.bounds`): an accuracy
    gains at most 1, so a straight line in log(parameters) that leaves [-1, 1] must bend first."""
    bounds = metrics.metric(metric).bounds
    if bounds is None:
        return False
    reach = bounds[1] - bounds[0]
    return interval.high > reach or interval.low < -reach


def prediction(fit: Fit, metric: str) -> Prediction:
    """The fit's word at the target: a number only when the metric's range and the fit's reach allow one."""
    iv = fit.prediction
    p_up = fit.probability_positive
    better_up = higher_is_better(metric) is not False
    p_better = p_up if better_up else 1.0 - p_up
    word = "helps" if p_better >= 0.5 else "hurts"
    if higher_is_better(metric) is None:
        word, p_better = ("rises", p_up) if p_up >= 0.5 else ("falls", 1.0 - p_up)
    reasons = []
    if _leaves_reachable_gains(iv, metric):
        # Only accuracies have finite bounds in the metric table, hence the wording.
        reasons.append("its interval leaves the range an accuracy can gain")
    widening = _width(iv) / _width(fit.measurement) if _width(fit.measurement) > 0 else math.inf
    if fit.extrapolation_factor > FAR_EXTRAPOLATION and widening > LACK_OF_FIT_WIDENING:
        # The rungs stray from the line beyond their own noise, and k - 2 degrees of freedom barely measure by how
        # much: a size read off the line that far out rests on a guess of that scatter.
        reasons.append(f"{fit.extrapolation_factor:.0f}x past the largest rung, and the rungs stray from the line "
                       f"beyond their own noise: that widens the interval {widening:.1f}x, to "
                       f"[{iv.low:+.3f}, {iv.high:+.3f}], on {fit.degrees_of_freedom} degree(s) of freedom")
    return Prediction(target=fit.target, target_parameters=fit.target_parameters, variant=fit.variant, gain=iv,
                      extrapolation_factor=fit.extrapolation_factor, verdict=verdict(iv, metric), direction=word,
                      direction_probability=max(p_better, 1.0 - p_better),  # of the direction it names
                      trusted=not reasons, untrusted_because="; ".join(reasons) or None,
                      beyond_range=bool(reasons and reasons[0].startswith("its interval")))
