"""The gap-closed section: per recipe variant, pair of models small < large, alpha and metric, the share of the
large model's tuning gain that decoding-time proxy-tuning by the small model's tuning closes
(`align_proxy.proxy_tuning`, `stats.gap_closed`)."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

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


def _model_name(model: str, models: dict[str, int]) -> str:
    """The study's name for a model a proxy cell names as the spec did (a registry name or a directory)."""
    return model if model in models else next((m for m in models if m.rstrip("/").endswith(model.rstrip("/"))), model)
