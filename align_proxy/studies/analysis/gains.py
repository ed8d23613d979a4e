"""The gain section: each recipe variant's gain (trained minus base) on each model and metric, with an interval
from the study's one resampler draw, its variance components, and what would resolve it when it is unclear;
and each base model's own score."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from align_proxy.studies.analysis.study import Quantity, Study, divergence, metrics_of, order_index, quantity
from align_proxy.studies.record import Record
from align_proxy.studies.stats import (
    NAN_INTERVAL,
    CrossedResampler,
    Interval,
    Power,
    VarianceParts,
    as_matrix,
    percentile_interval,
    required_design,
)
from align_proxy.studies.store import CellResult
from align_proxy.studies.verdicts import direction, improvement, verdict


@dataclass(frozen=True)
class DivergedSeeds(Record):
    """How a variant's training diverged at one model: in `seeds` of its `of` seeds, first at `step` with `loss`
    (the earliest seed's `run_metrics.Divergence`)."""

    seeds: int
    of: int
    step: int | None
    loss: float | None
    seed_list: list[int]

    @classmethod
    def of_cells(cls, cells: list[CellResult]) -> DivergedSeeds | None:
        hit = [(c, divergence(c)) for c in cells if divergence(c)]
        if not hit:
            return None
        first = min(hit, key=lambda pair: pair[1].step)[1]
        return cls(seeds=len(hit), of=len(cells), step=first.step, loss=first.loss,
                   seed_list=sorted(c.seed for c, _ in hit))


@dataclass(frozen=True)
class Variance(Record):
    """The gain's variance components (two-way ANOVA over seeds x items) and its standard error."""

    item: float
    seed: float
    interaction: float
    standard_error: float


@dataclass(frozen=True)
class Gain(Record):
    """A recipe variant's gain (trained minus base) on one model and metric, over its finished seeds.

    `improvement` is the gain signed so that larger is better (-inf for a variant that diverged, which ranks
    below every other); `power` says what would resolve an unclear gain.
    """

    recipe: str
    variant: str
    model: str
    parameters: int
    metric: str
    n_seeds: int
    seeds: list[int]
    per_item: bool
    n_items: int
    base_mean: float
    trained_mean: float
    trained: Interval
    gain: Interval
    improvement: float
    direction: str
    verdict: str
    diverged: DivergedSeeds | None
    variance: Variance | None
    power: Power | None

    @property
    def key(self) -> tuple[str, str, str, str]:
        return self.recipe, self.variant, self.model, self.metric


@dataclass(frozen=True)
class BaseScore(Record):
    """A base model's score for one recipe and metric; an evaluation shared by several cells counts once."""

    recipe: str
    model: str
    parameters: int
    metric: str
    n_evaluations: int
    base: Interval


def gain_section(study: Study, trained: list[CellResult], resampler: CrossedResampler) -> None:
    """Fill the study's quantities (with their replicates) and gain records, per recipe variant, model and metric,
    over the recipes' own cells (diverged ones included)."""
    groups = defaultdict(list)
    for cell in sorted(trained, key=lambda c: (c.recipe, c.variant, study.models[c.model], c.seed)):
        groups[(cell.recipe, cell.variant, cell.model)].append(cell)
    for (recipe, variant, model), cells in groups.items():
        finished = [c for c in cells if not divergence(c)]
        diverged = DivergedSeeds.of_cells(cells)
        for metric in metrics_of(cells):
            q = quantity(finished, metric)
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


def _gain_record(q: Quantity, models: dict[str, int], diverged: DivergedSeeds | None, confidence: float) -> Gain:
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
        direction=direction(gain.estimate, q.metric), verdict=word, diverged=diverged,
        variance=Variance(parts.item_var, parts.seed_var, parts.residual_var, parts.standard_error), power=power)


def _diverged_record(recipe: str, variant: str, model: str, metric: str, models: dict[str, int],
                     diverged: DivergedSeeds) -> Gain:
    """A variant none of whose seeds finished training at this model: no gain, the worst outcome."""
    return Gain(recipe=recipe, variant=variant, model=model, parameters=models[model], metric=metric, n_seeds=0,
                seeds=[], per_item=False, n_items=0, base_mean=math.nan, trained_mean=math.nan,
                trained=NAN_INTERVAL, gain=NAN_INTERVAL, improvement=-math.inf, direction="worse",
                verdict="diverges", diverged=diverged, variance=None, power=None)


def base_section(results: list[CellResult], models: dict[str, int], confidence: float,
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
    return sorted(records, key=lambda r: (r.recipe, models[r.model], order_index(r.metric)))
