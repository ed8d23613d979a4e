"""The metric-trust section (DataDecide's question): which metric measured at the smallest model orders the
variants as the judged metric does at the largest, by decision accuracy with its interval."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from align_proxy.studies.analysis.study import METRIC_ORDER, Study, ordered
from align_proxy.studies.analysis.transfer import finite_ranks
from align_proxy.studies.record import Record
from align_proxy.studies.stats import Interval, decision_accuracy, percentile_interval
from align_proxy.studies.verdicts import higher_is_better, metric_label


@dataclass(frozen=True)
class TrustCandidate(Record):
    """A metric measured on the smallest model, and how well it orders the variants as the judged metric does
    on the largest."""

    metric: str
    label: str
    n_variants: int
    decision_accuracy: Interval


@dataclass(frozen=True)
class MetricTrust(Record):
    """DataDecide's question for one recipe: which small-scale metric picks the large model's preference."""

    recipe: str
    judged: str
    small: str
    large: str
    candidates: list[TrustCandidate]


def metric_trust_section(study: Study, primary: dict[str, str]) -> list[MetricTrust]:
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
        metrics = ordered({k for r, _, m, k in study.gains if (r, m) == (recipe, small)}, METRIC_ORDER)
        for metric in metrics:
            if higher_is_better(metric) is None:  # KL and length order nothing
                continue
            predictor = study.improvements(recipe, metric, small)
            shared = sorted(predictor.keys() & target.keys())
            if len(shared) < 2:
                continue
            x = finite_ranks(np.stack([predictor[v] for v in shared], axis=1))
            y = finite_ranks(np.stack([target[v] for v in shared], axis=1))
            accuracy = decision_accuracy(x, y)
            candidates.append(TrustCandidate(metric, metric_label(metric), len(shared),
                                             percentile_interval(float(accuracy[0]), accuracy[1:], study.confidence)))
        if candidates:
            records.append(MetricTrust(recipe, judged, small, large,
                                       sorted(candidates, key=lambda c: -c.decision_accuracy.estimate)))
    return records
