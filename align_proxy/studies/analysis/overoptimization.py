"""The overoptimization section: each proxy reward model's curve in a study (a best-of-n cell's, or an RL cell's
trained against the reward model with --curve_every), alpha and beta against reward-model size, and whether the
peak moves with size (`studies.overoptimization` holds the maths)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from align_proxy.studies.overoptimization import (
    Curve,
    Overoptimization,
    SizeTrend,
    form_label,
    peak_shift,
    prompts_to_resolve,
    size_trends,
)
from align_proxy.studies.record import Record
from align_proxy.studies.stats import NAN_INTERVAL, Interval
from align_proxy.studies.store import CellResult


@dataclass(frozen=True)
class OveroptimizationCurve(Record):
    """One proxy reward model's overoptimization curve in a study, as the report reads it: an
    `overoptimization.Curve`'s gold and proxy reward as means over its prompts (the `Curve` keeps them per prompt
    for its fit and intervals), best-of-n (a best-of-n cell: points are n) or RL (a cell trained against the reward
    model with --curve_every: points are steps); `fit` is Gao et al.'s form on the gold gain."""

    form: str
    recipe: str
    variant: str
    reward_model: str  # the study's model the reward model was trained from
    parameters: int
    seed: int
    points: list[int]
    d: list[float]
    kl_measured: list[float] | None
    gold: list[float]
    proxy: list[float]
    fit: Overoptimization | None
    kl_policy: list[float] | None = None  # best-of-n: on the pool's completions, by the policy's own probabilities

    @classmethod
    def of(cls, curve: Curve, recipe: str = "", variant: str = "", seed: int = 0) -> OveroptimizationCurve:
        """The record of an `overoptimization.Curve` (means over its prompts)."""
        listed = lambda values: values.tolist() if values is not None else None  # noqa: E731
        return cls(curve.form, recipe, variant, curve.reward_model, curve.parameters, seed, list(curve.x),
                   curve.d.tolist(), listed(curve.kl_measured), curve.gold.mean(axis=0).tolist(),
                   curve.proxy.mean(axis=0).tolist(), curve.fit, listed(curve.kl_policy))

    @property
    def form_label(self) -> str:
        return form_label(self.form)

    @property
    def gold_gain(self) -> list[float]:
        return [g - self.gold[0] for g in self.gold]

    @property
    def proxy_gain(self) -> list[float]:
        return [p - self.proxy[0] for p in self.proxy]


@dataclass(frozen=True)
class PeakShift(Record):
    """Do smaller reward models overoptimise sooner (Gao et al.)? The peak d* of the largest reward model's curve
    minus the smallest's, of one form, recipe variant and seed, with its interval over the prompts both share
    (`overoptimization.peak_shift`), and roughly how many prompts would resolve it if it is not."""

    form: str
    recipe: str
    variant: str
    seed: int
    small: str
    large: str
    small_peak: Interval
    large_peak: Interval
    difference: Interval
    prompts: int
    prompts_to_resolve: int | None

    @property
    def resolved(self) -> bool:
        return self.difference.excludes_zero()


@dataclass(frozen=True)
class OveroptimizationSummary(Record):
    """Reward-model overoptimization in a study: every curve, alpha and beta against reward-model size, and
    whether the peak moves with size."""

    curves: list[OveroptimizationCurve]
    trends: list[SizeTrend]
    peak_shifts: list[PeakShift]


def overoptimization_section(cells: list[CellResult], models: dict[str, int], confidence: float,
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
