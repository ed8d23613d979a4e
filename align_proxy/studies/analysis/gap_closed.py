"""The gap-closed section: per recipe variant, pair of models small < large, alpha and metric, the share of the
large model's tuning gain that decoding-time proxy-tuning by the small model's tuning closes
(`align_proxy.proxy_tuning`, `stats.gap_closed`)."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from align_proxy.studies.analysis.study import Study, metrics_of, order_index, quantity
from align_proxy.studies.record import Record
from align_proxy.studies.stats import CrossedResampler, Interval, gap_closed
from align_proxy.studies.store import CellResult


@dataclass(frozen=True)
class GapClosed(Record):
    """Decoding-time proxy-tuning of a large base model by a small model's tuning (`align_proxy.proxy_tuning`):
    the share of the gap between the large base and the large model tuned directly that it closes, on one
    metric, with its interval (`stats.gap_closed`). `proxy`, `tuned` and `expert` are the mean scores of the
    proxy-tuned large model, the directly tuned large model and the small tuned model (the expert)."""

    recipe: str
    variant: str
    metric: str
    small: str
    large: str
    small_parameters: int
    large_parameters: int
    alpha: float
    n_seeds: int
    base: float
    proxy: float
    tuned: float
    expert: float | None
    gap_closed: Interval

    @property
    def size_ratio(self) -> float:
        return self.large_parameters / self.small_parameters if self.small_parameters else math.nan


def gap_closed_section(study: Study, proxy_cells: list[CellResult], resampler: CrossedResampler) -> list[GapClosed]:
    """Per recipe variant, pair small < large, alpha and metric: the share of the large model's tuning gain that
    decoding-time proxy-tuning by the small model's tuning closes. The tuned gain is the gain section's own
    quantity, and both share its item draw; the proxy-tuned gain's seeds are the small cells' training runs."""
    groups = defaultdict(list)
    for cell in proxy_cells:
        p = cell.params
        groups[(p.recipe, p.variant, p.small, cell.model, p.alpha)].append(cell)
    records = []
    for (recipe, variant, small, large, alpha), cells in sorted(groups.items(), key=lambda kv: str(kv[0])):
        small_name = _model_name(small, study.models)
        for metric in metrics_of(cells):
            proxy, tuned = quantity(cells, metric), study.quantities.get((recipe, variant, large, metric))
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
                                          order_index(g.metric)))


def gap_closed_records(scores, recipe: str, variant: str, small: str, large: str,
                       small_parameters: int, large_parameters: int, alpha: float, confidence: float = 0.95):
    """The gap closed in one standalone comparison (`align-proxy proxy-tune --tuned`), one seed: a `GapClosed` per
    metric the three models share (`stats.gap_closed` on per-item differences) of `scores`
    (`align_proxy.proxy_tuning.ProxyTuningScores`); none without the tuned large model's scores."""
    if scores.tuned is None:
        return []
    resampler = CrossedResampler()
    records = []
    for metric in scores.base.items:
        if metric not in scores.proxy.items or metric not in scores.tuned.items:
            continue
        base = np.asarray(scores.base.items[metric])
        proxy_gain = np.asarray(scores.proxy.items[metric]) - base
        tuned_gain = np.asarray(scores.tuned.items[metric]) - base
        interval = gap_closed([proxy_gain], [tuned_gain], resampler, confidence=confidence)
        records.append(GapClosed(recipe, variant, metric, small, large, small_parameters, large_parameters, alpha, 1,
                                 scores.base.metrics[metric], scores.proxy.metrics[metric],
                                 scores.tuned.metrics[metric], scores.expert.metrics.get(metric), interval))
    return records


def _model_name(model: str, models: dict[str, int]) -> str:
    """The study's name for a model a proxy cell names as the spec did (a registry name or a directory)."""
    return model if model in models else next((m for m in models if m.rstrip("/").endswith(model.rstrip("/"))), model)
