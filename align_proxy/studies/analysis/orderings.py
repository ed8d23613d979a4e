"""The ordering section: which recipe variant is best at each model, how often it wins across the study's
replicates, P(a beats b) per pair, and what would separate the top two when the leader is not resolved."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from align_proxy.studies.analysis.study import Quantity, Study
from align_proxy.studies.record import Record
from align_proxy.studies.stats import Power, VarianceParts, probability_greater, required_design
from align_proxy.studies.verdicts import RESOLVED


@dataclass(frozen=True)
class Ordering(Record):
    """Which variant is best at one model: P(best) per variant, P(a beats b) per pair, and whether the leader is
    resolved; `runner_up` and `power` (what would separate the top two) only when it is not."""

    recipe: str
    metric: str
    model: str
    variants: list[str]
    leader: str
    p_best: dict[str, float]
    p_beats: dict[str, dict[str, float]]
    resolved: bool
    runner_up: str | None = None
    power: Power | None = None


def ordering_section(study: Study) -> dict[tuple, Ordering]:
    """(recipe, metric, model) -> its ordering of the variants."""
    orderings = {}
    for recipe, metric, model in sorted({(r, k, m) for r, _, m, k in study.gains}):
        variants = study.improvements(recipe, metric, model)
        quantities = {v: study.quantities.get((recipe, v, model, metric)) for v in variants}
        orderings[(recipe, metric, model)] = _ordering_record(recipe, metric, model, variants, quantities,
                                                              study.confidence)
    return orderings


def _ordering_record(recipe: str, metric: str, model: str, variants: dict[str, np.ndarray],
                     quantities: dict[str, Quantity | None], confidence: float) -> Ordering:
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


def _difference_parts(a: Quantity | None, b: Quantity | None) -> VarianceParts | None:
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
