"""What every section of the analysis shares: one recipe variant's scores on one model and metric with their
replicates (`Quantity`), and the study they sit in (`Study`: models in size order, every quantity and gain)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from align_proxy.metrics import METRICS
from align_proxy.run_metrics import Divergence
from align_proxy.studies.stats import as_matrix
from align_proxy.studies.store import CellResult
from align_proxy.studies.verdicts import higher_is_better

if TYPE_CHECKING:  # the gain section fills a Study with its records
    from align_proxy.studies.analysis.gains import Gain

METRIC_ORDER = list(METRICS)


@dataclass
class Quantity:
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


def quantity(cells: list[CellResult], metric: str) -> Quantity | None:
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
    return Quantity(first.recipe, first.variant, first.model, metric, [c.seed for c in cells], paired, base, trained)


def divergence(cell: CellResult) -> Divergence | None:
    """Where the cell's training diverged (its metrics.json `diverged`), None when it finished."""
    raw = getattr(cell, "diverged", None)
    return raw if isinstance(raw, Divergence) or raw is None else Divergence.from_json(raw)


def improvement_replicates(record: Gain, quantity: Quantity | None, n: int) -> np.ndarray:
    """[estimate, replicates...] of a `gains.Gain`'s improvement (larger is better); a diverging variant is worst
    in all."""
    if record.verdict == "diverges" or quantity is None:
        return np.full(n + 1, -np.inf)
    sign = -1.0 if higher_is_better(record.metric) is False else 1.0
    return sign * np.concatenate([[record.gain.estimate], quantity.gain_replicates])


def metrics_of(cells: list[CellResult]) -> list[str]:
    found = {m for c in cells for m in c.trained if m in c.base} | {m for c in cells if divergence(c) for m in c.base}
    return ordered(found, METRIC_ORDER)


def order_index(metric: str) -> int:
    return METRIC_ORDER.index(metric) if metric in METRIC_ORDER else len(METRIC_ORDER)


def ordered(names: set[str], preferred: list[str]) -> list[str]:
    """`names` in the order of `preferred`, the others after it alphabetically."""
    return sorted(names, key=lambda n: (preferred.index(n) if n in preferred else len(preferred), n))


@dataclass
class Study:
    """The study's models in size order and every quantity's replicates and gain record, as the gain section
    fills them for the sections after it."""

    models: dict[str, int]
    order: list[str]
    confidence: float
    n_resamples: int
    quantities: dict[tuple, Quantity] = field(default_factory=dict)
    gains: dict[tuple, Gain] = field(default_factory=dict)  # (recipe, variant, model, metric) -> its record

    def improvements(self, recipe: str, metric: str, model: str) -> dict[str, np.ndarray]:
        """Per variant: [estimate, replicates...] of its improvement (larger is better) at one model."""
        return {v: improvement_replicates(g, self.quantities.get((r, v, m, k)), self.n_resamples)
                for (r, v, m, k), g in self.gains.items() if (r, k, m) == (recipe, metric, model)}
