"""The headline section: per recipe, its verdict at each scale (judged by its best variant that never diverged),
whether it transfers from the smallest model to the largest, and the prediction at the target size. It decides;
the report words it (`report/prose.py`: the confidence and the conclusion, written when the report renders)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from align_proxy.studies import verdicts
from align_proxy.studies.analysis.fits import Fit, Prediction, prediction
from align_proxy.studies.analysis.gains import DivergedSeeds, Gain
from align_proxy.studies.analysis.orderings import Ordering
from align_proxy.studies.analysis.study import Study
from align_proxy.studies.analysis.transfer import RankAgreement, RankIntervals, Transfer
from align_proxy.studies.record import Record
from align_proxy.studies.stats import NAN_INTERVAL, Interval, Power


@dataclass(frozen=True)
class VariantAtScale(Record):
    gain: Interval
    verdict: str
    p_best: float | None


@dataclass(frozen=True)
class Scale(Record):
    """One recipe at one model, judged by its best variant that never diverged."""

    model: str
    parameters: int
    best_variant: str | None
    gain: Interval
    verdict: str
    power: Power | None
    p_best: float
    resolved: bool
    ordering_power: Power | None
    diverged: dict[str, DivergedSeeds]
    variants: dict[str, VariantAtScale]


@dataclass(frozen=True)
class TransferSummary(Record):
    """Whether a recipe's verdict and its best variant carry from the smallest model to the largest."""

    smallest: str
    largest: str
    verdict_smallest: str
    verdict_largest: str
    transfers: str
    ordering: str
    same_best_variant: bool
    sign_agreement: float
    rank_agreement: RankAgreement
    rank_intervals: RankIntervals | None


@dataclass(frozen=True)
class Start(Record):
    """The recipe variant whose trained model a chained recipe's cells started from: the one of each cell's own
    model, or of `model` for every cell (a fixed policy; with `reward_from`, the recipe whose reward models the
    cells trained against, a cell's model is then its reward model's size)."""

    recipe: str
    variant: str
    model: str | None = None
    reward_from: str | None = None

    @classmethod
    def of(cls, start: dict | None, reward_from: dict | None = None) -> Start | None:
        """From the spec's `starts` entry of a recipe ({"recipe", "variant"[, "model"]}) and its `rewards_from`."""
        if not start:
            return None
        return cls(start["recipe"], start["variant"], start.get("model"),
                   reward_from["recipe"] if reward_from else None)


@dataclass(frozen=True)
class Headline(Record):
    """A recipe's answer: its verdict per scale, whether it transfers, and the prediction (in words:
    `report/prose.py`'s `conclusion` and `confidence`)."""

    recipe: str
    metric: str
    metric_label: str
    higher_is_better: bool | None
    scales: list[Scale]
    recommended_variant: str | None
    transfer: TransferSummary | None
    prediction: Prediction | None
    starts_from: Start | None = None


def headline(recipe: str, metric: str, study: Study, orderings: dict[tuple, Ordering], transfer: list[Transfer],
             fits: list[Fit], target, start: Start | None) -> Headline:
    mine = [g for g in study.gains.values() if g.recipe == recipe and g.metric == metric]
    scales = [_scale_entry(model, [g for g in mine if g.model == model], orderings[(recipe, metric, model)])
              for model in study.order if any(g.model == model for g in mine)]
    recommended = scales[-1].best_variant if scales else None
    fit = next((f for f in fits if (f.recipe, f.variant, f.metric) == (recipe, recommended, metric)), None)
    return Headline(recipe=recipe, metric=metric, metric_label=verdicts.metric_label(metric),
                    higher_is_better=verdicts.higher_is_better(metric), scales=scales,
                    recommended_variant=recommended, transfer=_transfer_summary(scales, transfer, recipe, metric),
                    prediction=prediction(fit, metric) if fit and target else None, starts_from=start)


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

