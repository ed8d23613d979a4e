"""A transfer study's numbers: each recipe variant's gain per model with an interval that matches the study's
design, which variant wins at each scale and how sure that is, how gains and orderings carry from small
models to large, which small-scale metric predicts the large model's ranking, a fit against scale, and
what more data would resolve what is still unclear.

Finished cells in, one typed `records.StudyAnalysis` out (`to_json()` is report.json); the report only
draws what is here, and `report/prose.py` words it. Every interval, probability and ordering comes from one `stats.CrossedResampler`
draw over the whole study: items shared by every cell scored on them, seeds per training run.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field, replace
from itertools import combinations

import numpy as np
from scipy import stats as scipy_stats

from align_proxy.metrics import METRICS
from align_proxy.studies import verdicts
from align_proxy.studies.scale import fit_line_across_sizes
from align_proxy.studies.overoptimization import Curve, peak_shift, prompts_to_resolve, size_trends
from align_proxy.studies.records import (
    BaseScore,
    CellCount,
    Completeness,
    Divergence,
    Fit,
    Gain,
    GapClosed,
    Headline,
    MetricInfo,
    MetricTrust,
    MissingCell,
    ModelSize,
    Ordering,
    OveroptimizationCurve,
    OveroptimizationSummary,
    PeakShift,
    Prediction,
    RankAgreement,
    RankIntervals,
    Scale,
    Start,
    StudyAnalysis,
    Transfer,
    TransferSummary,
    TrustCandidate,
    Variance,
    VariantAtScale,
)
from align_proxy.studies.stats import (
    NAN_INTERVAL,
    CrossedResampler,
    Interval,
    VarianceParts,
    as_matrix,
    decision_accuracy,
    gap_closed,
    percentile_interval,
    probability_greater,
    rank_agreement,
    ratio_interval,
    required_design,
    sign_agreement,
)
from align_proxy.studies.store import CellResult
from align_proxy.studies.verdicts import RESOLVED, higher_is_better, improvement, metric_label, verdict

SCHEMA_VERSION = 3
METRIC_ORDER = list(METRICS)


def _diverged(cell: CellResult) -> dict | None:
    return getattr(cell, "diverged", None)


def _start(start: dict | None, reward_from: dict | None = None) -> Start | None:
    if not start:
        return None
    return Start(start["recipe"], start["variant"], start.get("model"), reward_from["recipe"] if reward_from else None)


# --- per (recipe, variant, model, metric): the data and their replicates -------------------------------

@dataclass
class _Quantity:
    """One recipe variant's scores on one model and metric, over its finished (not diverged) seeds."""

    recipe: str
    variant: str
    model: str
    metric: str
    seeds: list[int]
    per_item: bool
    base: np.ndarray  # (items,) or (1,) when only aggregates are known
    trained: np.ndarray  # (seeds x items)
    gain_replicates: np.ndarray = field(default=None)
    trained_replicates: np.ndarray = field(default=None)

    @property
    def gain(self) -> np.ndarray:
        return self.trained - self.base[None, :]

    @property
    def key(self) -> tuple:
        return self.recipe, self.variant, self.model, self.metric


def _quantity(cells: list[CellResult], metric: str) -> _Quantity | None:
    """Per-item scores when every seed has paired items of one length, else one aggregate per seed."""
    cells = [c for c in cells if metric in c.base and metric in c.trained]
    if not cells:
        return None
    first = cells[0]
    paired = all(c.items_base.get(metric) and len(c.items_base[metric]) == len(c.items_trained.get(metric) or [])
                 for c in cells) and len({len(c.items_base[metric]) for c in cells}) == 1
    if paired:
        base = np.asarray(first.items_base[metric], dtype=float)
        trained = as_matrix([c.items_trained[metric] for c in cells])
    else:
        base = np.array([float(np.mean([c.base[metric] for c in cells]))])
        trained = np.array([[c.trained[metric]] for c in cells], dtype=float)
        # Each seed's own base (they are one evaluation when shared, so this changes nothing then).
        trained = trained - np.array([[c.base[metric]] for c in cells]) + base[None, :]
    return _Quantity(first.recipe, first.variant, first.model, metric, [c.seed for c in cells], paired, base, trained)


def _metrics_of(cells: list[CellResult]) -> list[str]:
    found = {m for c in cells for m in c.trained if m in c.base} | {m for c in cells if _diverged(c) for m in c.base}
    return _ordered(found, METRIC_ORDER)


# --- records --------------------------------------------------------------------------------------------

def _gain_record(q: _Quantity, models: dict[str, int], diverged: Divergence | None, confidence: float) -> Gain:
    gain = percentile_interval(float(q.gain.mean()), q.gain_replicates, confidence)
    n_values = q.gain.size
    parts = VarianceParts.of(q.gain)
    word = "diverges" if diverged else verdict(gain, q.metric, n_values)
    power = None
    if word == "unclear" and n_values > 1 and len(q.seeds) > 1:
        power = required_design(parts, gain.estimate, confidence)
    return Gain(
        recipe=q.recipe, variant=q.variant, model=q.model, parameters=models[q.model], metric=q.metric,
        n_seeds=len(q.seeds), seeds=q.seeds, per_item=q.per_item, n_items=q.base.size if q.per_item else 0,
        base_mean=float(q.base.mean()), trained_mean=float(q.trained.mean()),
        trained=percentile_interval(float(q.trained.mean()), q.trained_replicates, confidence),
        # A variant that diverged in any seed ranks below every variant that never did.
        gain=gain, improvement=-math.inf if diverged else improvement(gain.estimate, q.metric),
        direction=verdicts.direction(gain.estimate, q.metric), verdict=word, diverged=diverged,
        variance=Variance(parts.item_var, parts.seed_var, parts.residual_var, parts.standard_error), power=power)


def _diverged_record(recipe: str, variant: str, model: str, metric: str, models: dict[str, int],
                     diverged: Divergence) -> Gain:
    """A variant none of whose seeds finished training at this model: no gain, the worst outcome."""
    return Gain(recipe=recipe, variant=variant, model=model, parameters=models[model], metric=metric, n_seeds=0,
                seeds=[], per_item=False, n_items=0, base_mean=math.nan, trained_mean=math.nan,
                trained=NAN_INTERVAL, gain=NAN_INTERVAL, improvement=-math.inf, direction="worse",
                verdict="diverges", diverged=diverged, variance=None, power=None)


def _divergence_summary(cells: list[CellResult]) -> Divergence | None:
    hit = [(c, _diverged(c)) for c in cells if _diverged(c)]
    if not hit:
        return None
    first = min(hit, key=lambda pair: pair[1].get("step", 0))[1]
    return Divergence(seeds=len(hit), of=len(cells), step=first.get("step"), loss=first.get("loss"),
                      seed_list=sorted(c.seed for c, _ in hit))


def _improvement_replicates(record: Gain, quantity: _Quantity | None, n: int) -> np.ndarray:
    """[estimate, replicates...] of the improvement (larger is better); a diverging variant is worst in all."""
    if record.verdict == "diverges" or quantity is None:
        return np.full(n + 1, -np.inf)
    sign = -1.0 if higher_is_better(record.metric) is False else 1.0
    return sign * np.concatenate([[record.gain.estimate], quantity.gain_replicates])


def _ordering_record(recipe: str, metric: str, model: str, variants: dict[str, np.ndarray],
                     quantities: dict[str, _Quantity | None], confidence: float) -> Ordering:
    """Which variant is best at one model, and how often it wins across replicates."""
    names = sorted(variants)
    table = np.vstack([variants[v][1:] for v in names])  # variants x replicates
    best_in = table.max(axis=0)
    winners = table == best_in[None, :]
    p_best = {v: float((winners[i] / winners.sum(axis=0)).mean()) for i, v in enumerate(names)}
    estimates = {v: variants[v][0] for v in names}
    leader = max(names, key=lambda v: (estimates[v], v))
    beats = {a: {b: probability_greater(variants[a][1:], variants[b][1:]) for b in names if b != a} for a in names}
    resolved = len(names) == 1 or p_best[leader] >= RESOLVED
    runner_up = power = None
    if not resolved:
        runner_up = max((v for v in names if v != leader), key=lambda v: (estimates[v], v))
        difference = _difference_parts(quantities.get(leader), quantities.get(runner_up))
        if difference is not None:
            power = required_design(difference, estimates[leader] - estimates[runner_up], confidence)
    return Ordering(recipe=recipe, metric=metric, model=model, variants=names, leader=leader, p_best=p_best,
                    p_beats=beats, resolved=resolved, runner_up=runner_up, power=power)


def _difference_parts(a: _Quantity | None, b: _Quantity | None) -> VarianceParts | None:
    """Variance components of the difference between two variants' gains on the same items (independent runs)."""
    if a is None or b is None or not (a.per_item and b.per_item) or a.base.size != b.base.size:
        return None
    pa, pb = VarianceParts.of(a.gain), VarianceParts.of(b.gain)
    s = min(pa.n_seeds, pb.n_seeds)
    if s < 2:
        return None
    item_var = float((a.gain.mean(axis=0) - b.gain.mean(axis=0)).var(ddof=1))
    return VarianceParts(pa.mean - pb.mean, s, pa.n_items, item_var, pa.seed_var + pb.seed_var,
                         pa.residual_var + pb.residual_var)


def _rank_replicates(small: np.ndarray, large: np.ndarray, confidence: float) -> RankIntervals:
    """Decision accuracy, Spearman and Kendall of two orderings (variants in columns; row 0 the estimate, the
    rest replicates), each with its percentile interval over the replicates."""
    small, large = _finite_ranks(small), _finite_ranks(large)
    accuracy = decision_accuracy(small, large)
    rs, rl = scipy_stats.rankdata(small, axis=1), scipy_stats.rankdata(large, axis=1)
    # percentile_interval leaves the bounds undefined when some replicates are (a constant ordering).
    spearman = _row_correlation(rs, rl)
    kendall = _kendall_tau_b(small, large)
    return RankIntervals(
        decision_accuracy=percentile_interval(float(accuracy[0]), accuracy[1:], confidence),
        spearman=percentile_interval(float(spearman[0]), spearman[1:], confidence),
        kendall=percentile_interval(float(kendall[0]), kendall[1:], confidence))


def _finite_ranks(values: np.ndarray) -> np.ndarray:
    """Diverging variants (-inf) rank below every other, tied with each other."""
    values = np.array(values, dtype=float)
    finite = values[np.isfinite(values)]
    floor = (finite.min() - 1.0) if finite.size else -1.0
    values[~np.isfinite(values)] = floor
    return values


def _row_correlation(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    xc, yc = x - x.mean(axis=1, keepdims=True), y - y.mean(axis=1, keepdims=True)
    denominator = np.sqrt((xc ** 2).sum(axis=1) * (yc ** 2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (xc * yc).sum(axis=1) / denominator, np.nan)


def _kendall_tau_b(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    pairs = list(combinations(range(x.shape[1]), 2))
    sx = np.stack([np.sign(x[:, i] - x[:, j]) for i, j in pairs], axis=1)
    sy = np.stack([np.sign(y[:, i] - y[:, j]) for i, j in pairs], axis=1)
    denominator = np.sqrt((sx != 0).sum(axis=1) * (sy != 0).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (sx * sy).sum(axis=1) / denominator, np.nan)


# --- the study ------------------------------------------------------------------------------------------

@dataclass
class _Study:
    """What the sections below share: the study's models in size order and every quantity's replicates."""

    models: dict[str, int]
    order: list[str]
    confidence: float
    n_resamples: int
    quantities: dict[tuple, _Quantity] = field(default_factory=dict)
    gains: dict[tuple, Gain] = field(default_factory=dict)

    def improvements(self, recipe: str, metric: str, model: str) -> dict[str, np.ndarray]:
        return {v: _improvement_replicates(g, self.quantities.get((r, v, m, k)), self.n_resamples)
                for (r, v, m, k), g in self.gains.items() if (r, k, m) == (recipe, metric, model)}


def _gain_section(study: _Study, groups: dict, resampler: CrossedResampler) -> None:
    for (recipe, variant, model), cells in groups.items():
        finished = [c for c in cells if not _diverged(c)]
        diverged = _divergence_summary(cells)
        for metric in _metrics_of(cells):
            q = _quantity(finished, metric)
            key = (recipe, variant, model, metric)
            if q is None:
                if diverged:
                    study.gains[key] = _diverged_record(recipe, variant, model, metric, study.models, diverged)
                continue
            group = (recipe, variant, model)
            q.gain_replicates = resampler.replicates(q.gain, group)
            q.trained_replicates = resampler.replicates(q.trained, group)
            study.quantities[key] = q
            study.gains[key] = _gain_record(q, study.models, diverged, study.confidence)


def _ordering_section(study: _Study) -> dict[tuple, Ordering]:
    orderings = {}
    for recipe, metric, model in sorted({(r, k, m) for r, _, m, k in study.gains}):
        variants = study.improvements(recipe, metric, model)
        quantities = {v: study.quantities.get((recipe, v, model, metric)) for v in variants}
        orderings[(recipe, metric, model)] = _ordering_record(recipe, metric, model, variants, quantities,
                                                              study.confidence)
    return orderings


def _transfer_section(study: _Study) -> list[Transfer]:
    """For each pair of models small < large: gain ratios, sign and rank agreement of the variants."""
    by_recipe_metric: dict[tuple, dict[str, dict[str, Gain]]] = defaultdict(lambda: defaultdict(dict))
    for (recipe, variant, model, metric), g in study.gains.items():
        by_recipe_metric[(recipe, metric)][model][variant] = g
    records = []
    for (recipe, metric), per_model in by_recipe_metric.items():
        present = [m for m in study.order if m in per_model]
        for small, large in combinations(present, 2):
            shared = sorted(per_model[small].keys() & per_model[large].keys())
            ratios = {}
            for v in shared:
                qs, ql = (study.quantities.get((recipe, v, m, metric)) for m in (small, large))
                ratios[v] = (ratio_interval(_with_estimate(qs), _with_estimate(ql), study.confidence)
                             if qs is not None and ql is not None else NAN_INTERVAL)
            estimates = [{v: per_model[m][v].gain.estimate for v in shared
                          if per_model[m][v].verdict != "diverges"} for m in (small, large)]
            improvements = [{v: per_model[m][v].improvement for v in shared} for m in (small, large)]
            rank_intervals = None
            if len(shared) >= 2:
                small_reps = np.stack([study.improvements(recipe, metric, small)[v] for v in shared], axis=1)
                large_reps = np.stack([study.improvements(recipe, metric, large)[v] for v in shared], axis=1)
                rank_intervals = _rank_replicates(small_reps, large_reps, study.confidence)
            ranks = rank_agreement(*[{v: _finite(x) for v, x in imp.items()} for imp in improvements])
            records.append(Transfer(recipe=recipe, metric=metric, small=small, large=large,
                                    small_parameters=study.models[small], large_parameters=study.models[large],
                                    variants=shared, ratios=ratios, sign_agreement=sign_agreement(*estimates),
                                    rank_agreement=RankAgreement(**ranks), rank_intervals=rank_intervals))
    return records


def _with_estimate(q: _Quantity) -> np.ndarray:
    return np.concatenate([[q.gain.mean()], q.gain_replicates])


def _finite(x: float) -> float:
    return x if math.isfinite(x) else -1e300


def _metric_trust_section(study: _Study, primary: dict[str, str]) -> list[MetricTrust]:
    """Per recipe (DataDecide's question): how well does each metric measured at the smallest model order the
    variants as the judged metric does at the largest? Decision accuracy with its interval."""
    records = []
    for recipe, judged in primary.items():
        models = [m for m in study.order if any((r, mm) == (recipe, m) for r, _, mm, _ in study.gains)]
        if len(models) < 2:
            continue
        small, large = models[0], models[-1]
        target = study.improvements(recipe, judged, large)
        if len(target) < 2:
            continue
        candidates = []
        metrics = _ordered({k for r, _, m, k in study.gains if (r, m) == (recipe, small)}, METRIC_ORDER)
        for metric in metrics:
            if higher_is_better(metric) is None:  # KL and length order nothing
                continue
            predictor = study.improvements(recipe, metric, small)
            shared = sorted(predictor.keys() & target.keys())
            if len(shared) < 2:
                continue
            x = _finite_ranks(np.stack([predictor[v] for v in shared], axis=1))
            y = _finite_ranks(np.stack([target[v] for v in shared], axis=1))
            accuracy = decision_accuracy(x, y)
            candidates.append(TrustCandidate(metric, metric_label(metric), len(shared),
                                             percentile_interval(float(accuracy[0]), accuracy[1:], study.confidence)))
        if candidates:
            records.append(MetricTrust(recipe, judged, small, large,
                                       sorted(candidates, key=lambda c: -c.decision_accuracy.estimate)))
    return records


def _fit_section(study: _Study, target: tuple[str, float] | None) -> list[Fit]:
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
            record = replace(record, prediction_trusted=_prediction(record, metric).trusted)
        records.append(record)
    return records


def _width(interval: Interval) -> float:
    return interval.high - interval.low


def _prediction(fit: Fit, metric: str) -> Prediction:
    """The fit's word at the target: a number only when the metric's range and the fit's reach allow one."""
    iv = fit.prediction
    p_up = fit.probability_positive
    better_up = higher_is_better(metric) is not False
    p_better = p_up if better_up else 1.0 - p_up
    word = "helps" if p_better >= 0.5 else "hurts"
    if higher_is_better(metric) is None:
        word, p_better = ("rises", p_up) if p_up >= 0.5 else ("falls", 1.0 - p_up)
    reasons = []
    if metric.endswith("_accuracy") and (iv.high > 1 or iv.low < -1):
        # An accuracy gains at most 1: a straight line in log(parameters) that leaves [-1, 1] must bend first.
        reasons.append("its interval leaves the range an accuracy can gain")
    widening = _width(iv) / _width(fit.measurement) if _width(fit.measurement) > 0 else math.inf
    if fit.extrapolation_factor > verdicts.FAR_EXTRAPOLATION and widening > verdicts.LACK_OF_FIT_WIDENING:
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


# --- headline ---------------------------------------------------------------------------------------------

def _headline(recipe: str, metric: str, study: _Study, orderings: dict[tuple, Ordering], transfer: list[Transfer],
              fits: list[Fit], target, start: Start | None) -> Headline:
    mine = [g for g in study.gains.values() if g.recipe == recipe and g.metric == metric]
    scales = [_scale_entry(model, [g for g in mine if g.model == model], orderings[(recipe, metric, model)])
              for model in study.order if any(g.model == model for g in mine)]
    recommended = scales[-1].best_variant if scales else None
    fit = next((f for f in fits if (f.recipe, f.variant, f.metric) == (recipe, recommended, metric)), None)
    return Headline(recipe=recipe, metric=metric, metric_label=metric_label(metric),
                    higher_is_better=higher_is_better(metric), scales=scales, recommended_variant=recommended,
                    transfer=_transfer_summary(scales, transfer, recipe, metric),
                    prediction=_prediction(fit, metric) if fit and target else None, starts_from=start)


def _scale_entry(model: str, rows: list[Gain], ordering: Ordering) -> Scale:
    """The best variant that never diverged judges the scale; when every variant diverged, the scale diverges."""
    ranked = [g for g in rows if g.verdict != "diverges"]
    best = max(ranked, key=lambda g: (g.improvement, g.variant)) if ranked else None
    return Scale(model=model, parameters=rows[0].parameters,
                 best_variant=best.variant if best else None,
                 gain=best.gain if best else NAN_INTERVAL,
                 verdict=best.verdict if best else "diverges",
                 power=best.power if best else None,
                 p_best=ordering.p_best.get(best.variant, math.nan) if best else math.nan,
                 resolved=ordering.resolved and best is not None and ordering.leader == best.variant,
                 ordering_power=ordering.power, diverged={g.variant: g.diverged for g in rows if g.diverged},
                 variants={g.variant: VariantAtScale(g.gain, g.verdict, ordering.p_best.get(g.variant))
                           for g in rows})


def _transfer_summary(scales: list[Scale], transfer: list[Transfer], recipe: str,
                      metric: str) -> TransferSummary | None:
    if len(scales) < 2:
        return None
    first, last = scales[0], scales[-1]
    ends = {_as_outcome(first.verdict), _as_outcome(last.verdict)}
    transfers = ("yes" if len(ends) == 1 and "unclear" not in ends else
                 "no" if ends == {"helps", "hurts"} else "unclear")
    pair = next(t for t in transfer if (t.recipe, t.metric, t.small, t.large) ==
                (recipe, metric, first.model, last.model))
    n_variants = len(first.variants.keys() & last.variants.keys())
    if n_variants < 2:
        ordering = "one variant"
    elif first.resolved and last.resolved:
        ordering = "same" if first.best_variant == last.best_variant else "changes"
    else:
        ordering = "not resolved"
    return TransferSummary(smallest=first.model, largest=last.model, verdict_smallest=first.verdict,
                           verdict_largest=last.verdict, transfers=transfers, ordering=ordering,
                           same_best_variant=ordering == "same", sign_agreement=pair.sign_agreement,
                           rank_agreement=pair.rank_agreement, rank_intervals=pair.rank_intervals)


def _as_outcome(word: str) -> str:
    # A recipe whose every variant diverges at a scale is, for transfer, a recipe that hurts there.
    return "hurts" if word == "diverges" else word


# --- entry point -----------------------------------------------------------------------------------------

def analyse(results: list[CellResult], models: dict[str, int], primary_metrics: dict[str, str],
            target: tuple[str, float] | None = None, confidence: float = 0.95, n_resamples: int = 2000,
            cells: list[dict] | None = None, starts: dict[str, dict] | None = None,
            rewards_from: dict[str, dict] | None = None) -> StudyAnalysis:
    """Every number of a study's report, as typed records (`.to_json()` is report.json).

    `results` are finished cells, diverged ones included (a `diverged` attribute of {step, loss}); `models`
    maps name -> parameters (models with no results yet count as missing); `primary_metrics` maps recipe ->
    the metric its headline is judged on; `target` is (name, parameters) to predict gains at; `cells`
    (ResultStore.cells()) lists the study's cells, else the grid is inferred; `starts` maps recipe -> the
    {"recipe", "variant"[, "model"]} its cells started from (their gains are over that model); `rewards_from` maps
    an RL recipe -> the reward recipe whose models its cells trained against (their curves are overoptimization's).
    """
    every_cell = results
    proxy_cells = [c for c in results if getattr(c, "proxy", None)]  # proxy-tuning cells have their own section
    best_of_n_cells = [c for c in results if getattr(c, "best_of_n", None)]  # and so have best-of-n cells
    results = [c for c in results if not getattr(c, "proxy", None) and not getattr(c, "best_of_n", None)]
    models = {**{c.model: c.parameters for c in every_cell}, **models}
    order = sorted(models, key=lambda m: (models[m], m))
    study = _Study(models, order, confidence, n_resamples)
    groups = defaultdict(list)
    for cell in sorted(results, key=lambda c: (c.recipe, c.variant, models[c.model], c.seed)):
        groups[(cell.recipe, cell.variant, cell.model)].append(cell)
    resampler = CrossedResampler(n_resamples, seed=0)
    _gain_section(study, groups, resampler)
    gaps = _gap_closed_section(study, proxy_cells, resampler)
    orderings = _ordering_section(study)
    transfer = _transfer_section(study)
    fits = _fit_section(study, target)
    recipes = _ordered({c.recipe for c in results}, list(primary_metrics))
    gains = sorted(study.gains.values(), key=lambda g: (g.recipe, g.variant, models[g.model], _order_index(g.metric)))
    primary = {r: _primary(r, primary_metrics, gains) for r in recipes}
    headline = [_headline(r, primary[r], study, orderings, transfer, fits, target,
                          _start((starts or {}).get(r), (rewards_from or {}).get(r))) for r in recipes]
    metrics = _ordered({g.metric for g in gains}, METRIC_ORDER)
    return StudyAnalysis(
        schema=SCHEMA_VERSION, confidence=confidence, n_resamples=n_resamples, resolved_threshold=RESOLVED,
        models=[ModelSize(m, models[m]) for m in order],
        target=ModelSize(*target) if target else None,
        seeds=sorted({c.seed for c in results}),
        recipes={r: sorted({c.variant for c in results if c.recipe == r}) for r in recipes},
        metrics={m: MetricInfo(metric_label(m), higher_is_better(m)) for m in metrics},
        completeness=_completeness(every_cell, order, cells), headline=headline,
        base=_base_records(results, models, confidence, n_resamples), gains=gains,
        orderings=list(orderings.values()), transfer=transfer,
        metric_trust=_metric_trust_section(study, primary), fits=fits, gap_closed=gaps,
        overoptimization=_overoptimization_section(
            best_of_n_cells + [c for c in results if c.recipe in (rewards_from or {})], models, confidence,
            n_resamples))


def _overoptimization_section(cells: list[CellResult], models: dict[str, int], confidence: float,
                              n_resamples: int) -> OveroptimizationSummary | None:
    """Each curve's fit, alpha and beta against reward-model size, and per form, recipe variant and seed whose curves
    share their prompts, the smallest and largest reward model's peaks compared. RL cells without a curve (run
    without --curve_every) are left out."""
    curves = []
    for cell in sorted(cells, key=lambda c: (c.recipe, c.variant, c.seed, models[c.model])):
        if len(cell.curve) >= 2 and all("gold_reward" in p.get("items", {}) for p in cell.curve):
            curve = Curve.from_points(cell.curve, cell.model, models[cell.model], confidence, n_resamples)
            curves.append((cell, curve))
    if not curves:
        return None
    groups = defaultdict(list)
    for cell, curve in curves:
        groups[(curve.form, cell.recipe, cell.variant, cell.seed)].append(curve)
    shifts = []
    for (form, recipe, variant, seed), group in groups.items():
        small, large = group[0], group[-1]
        if small.parameters == large.parameters or small.gold.shape != large.gold.shape:
            continue
        difference = peak_shift(small, large, confidence, n_resamples)
        prompts = small.gold.shape[0]
        shifts.append(PeakShift(form, recipe, variant, seed, small.reward_model, large.reward_model,
                                small.fit.peak_d if small.fit else NAN_INTERVAL,
                                large.fit.peak_d if large.fit else NAN_INTERVAL, difference, prompts,
                                prompts_to_resolve(difference, prompts)))
    records = [OveroptimizationCurve.of(curve, cell.recipe, cell.variant, cell.seed) for cell, curve in curves]
    return OveroptimizationSummary(records, size_trends([c for _, c in curves], confidence), shifts)


def _gap_closed_section(study: _Study, proxy_cells: list[CellResult], resampler: CrossedResampler) -> list[GapClosed]:
    """Per recipe variant, pair small < large, alpha and metric: the share of the large model's tuning gain that
    decoding-time proxy-tuning by the small model's tuning closes. The tuned gain is the gain section's own
    quantity, and both share its item draw; the proxy-tuned gain's seeds are the small cells' training runs."""
    groups = defaultdict(list)
    for cell in proxy_cells:
        p = cell.proxy
        groups[(p["recipe"], p["variant"], p["small"], cell.model, p["alpha"])].append(cell)
    records = []
    for (recipe, variant, small, large, alpha), cells in sorted(groups.items(), key=lambda kv: str(kv[0])):
        small_name = _model_name(small, study.models)
        for metric in _metrics_of(cells):
            proxy, tuned = _quantity(cells, metric), study.quantities.get((recipe, variant, large, metric))
            if proxy is None or tuned is None or not (proxy.per_item and tuned.per_item) or \
                    proxy.base.size != tuned.base.size:
                continue
            expert = study.quantities.get((recipe, variant, small_name, metric))
            interval = gap_closed(list(proxy.gain), list(tuned.gain), resampler,
                                  groups=((recipe, variant, small_name), (recipe, variant, large)),
                                  confidence=study.confidence)
            records.append(GapClosed(
                recipe=recipe, variant=variant, metric=metric, small=small_name, large=large,
                small_parameters=study.models.get(small_name, 0), large_parameters=study.models[large], alpha=alpha,
                n_seeds=len(proxy.seeds), base=float(proxy.base.mean()), proxy=float(proxy.trained.mean()),
                tuned=float(tuned.trained.mean()), expert=float(expert.trained.mean()) if expert else None,
                gap_closed=interval))
    return sorted(records, key=lambda g: (g.recipe, g.variant, study.models[g.large], g.small_parameters, g.alpha,
                                          _order_index(g.metric)))


def _model_name(model: str, models: dict[str, int]) -> str:
    """The study's name for a model a proxy cell names as the spec did (a registry name or a directory)."""
    return model if model in models else next((m for m in models if m.rstrip("/").endswith(model.rstrip("/"))), model)


def _base_records(results: list[CellResult], models: dict[str, int], confidence: float,
                  n_resamples: int) -> list[BaseScore]:
    """Base scores per recipe (a reward model's base has a fresh score head, unlike a policy's) and model;
    an evaluation shared by several cells counts once."""
    resampler = CrossedResampler(n_resamples, seed=1)
    by_key: dict[tuple, dict[tuple, np.ndarray]] = defaultdict(dict)
    for cell in results:
        for metric, value in cell.base.items():
            items = cell.items_base.get(metric) or [value]
            by_key[(cell.recipe, cell.model, metric)][tuple(items)] = np.asarray(items, dtype=float)
    records = []
    for (recipe, model, metric), unique in by_key.items():
        matrix = as_matrix(list(unique.values()))
        estimate = float(matrix.mean())
        base = (percentile_interval(estimate, resampler.replicates(matrix, ("base", recipe, model)), confidence)
                if matrix.size > 1 else Interval(estimate, math.nan, math.nan))
        records.append(BaseScore(recipe, model, models[model], metric, len(unique), base))
    return sorted(records, key=lambda r: (r.recipe, models[r.model], _order_index(r.metric)))


def _completeness(results: list[CellResult], order: list[str], cells: list[dict] | None) -> Completeness:
    """Cells finished per recipe and model, and which are missing. Without the study's cell list, the
    expected grid is every recipe variant and seed seen in any result, on every model."""
    done = {(c.recipe, c.variant, c.model, c.seed) for c in results}
    if cells is not None:
        expected = {(c["recipe"], c["variant"], c["model"], c["seed"]): c.get("status", "pending") for c in cells}
    else:
        variants = sorted({(c.recipe, c.variant) for c in results})
        seeds = sorted({c.seed for c in results})
        expected = {(r, v, m, s): "not run" for (r, v) in variants for m in order for s in seeds}
    for key in done:
        expected[key] = "done" if expected.get(key) != "diverged" else "diverged"
    finished = {"done", "diverged"}
    table = defaultdict(lambda: {"done": 0, "expected": 0, "diverged": 0})
    for (recipe, _, model, _), status in expected.items():
        table[(recipe, model)]["expected"] += 1
        table[(recipe, model)]["done"] += status in finished
        table[(recipe, model)]["diverged"] += status == "diverged"
    missing = [MissingCell(r, v, m, s, status)
               for (r, v, m, s), status in sorted(expected.items(), key=lambda kv: str(kv[0])) if status not in finished]
    by_recipe_model = [CellCount(r, m, **counts) for (r, m), counts in
                       sorted(table.items(), key=lambda kv: (kv[0][0], order.index(kv[0][1]) if kv[0][1] in order else 0))]
    return Completeness(expected=len(expected), done=len(expected) - len(missing),
                        complete=bool(expected) and not missing,
                        diverged=sum(s == "diverged" for s in expected.values()),
                        expected_from="study cells" if cells is not None else "inferred from finished cells",
                        by_recipe_model=by_recipe_model, missing=missing,
                        models_without_results=[m for m in order if m not in {c.model for c in results}])


def _order_index(metric: str) -> int:
    return METRIC_ORDER.index(metric) if metric in METRIC_ORDER else len(METRIC_ORDER)


def _ordered(names: set[str], preferred: list[str]) -> list[str]:
    """`names` in the order of `preferred`, the others after it alphabetically."""
    return sorted(names, key=lambda n: (preferred.index(n) if n in preferred else len(preferred), n))


def _primary(recipe: str, primary_metrics: dict[str, str], gains: list[Gain]) -> str:
    measured = [g.metric for g in gains if g.recipe == recipe]
    wanted = primary_metrics.get(recipe)
    return wanted if wanted in measured or not measured else measured[0]
