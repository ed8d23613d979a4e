"""A transfer study's numbers: each recipe variant's gain per model with an interval that matches the study's
design, which variant wins at each scale and how sure that is, how gains and orderings carry from small
models to large, which small-scale metric predicts the large model's ranking, a fit against scale, and
what more data would resolve what is still unclear.

Finished cells in, one typed `StudyAnalysis` out; the report only draws what is here and words it as it renders
(`report/prose.py`; report.json is `to_json()` plus each headline's words). Every interval, probability and
ordering comes from one `stats.CrossedResampler` draw over the whole study: items shared by every cell scored on
them, seeds per training run.

One module per section, each with its own records: `gains` (and base scores), `orderings`, `transfer`, `trust`,
`fits`, `optima` (a hyperparameter's best value per rung and at the target), `gap_closed`, `overoptimization`,
`completeness`, `headline`; `study` holds what they share. `analyse`
below runs them in order; every record is importable from here, and so is their JSON form (`studies.record`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from align_proxy.kinds import CELL_KINDS, TRAIN
from align_proxy.studies.analysis.completeness import CellCount, Completeness, MissingCell, completeness_section
from align_proxy.studies.analysis.fits import Fit, Prediction, fit_section
from align_proxy.studies.analysis.gains import BaseScore, DivergedSeeds, Gain, Variance, base_section, gain_section
from align_proxy.studies.analysis.gap_closed import GapClosed, gap_closed_section
from align_proxy.studies.analysis.headline import (
    Headline,
    Scale,
    Start,
    TransferSummary,
    VariantAtScale,
    headline,
)
from align_proxy.studies.analysis.optima import Optimum, RungOptimum, optima_section
from align_proxy.studies.analysis.orderings import Ordering, ordering_section
from align_proxy.studies.analysis.overoptimization import (
    OveroptimizationCurve,
    OveroptimizationSummary,
    PeakShift,
    overoptimization_section,
)
from align_proxy.studies.analysis.study import METRIC_ORDER, Study, order_index, ordered
from align_proxy.studies.analysis.transfer import RankAgreement, RankIntervals, Transfer, transfer_section
from align_proxy.studies.analysis.trust import MetricTrust, TrustCandidate, metric_trust_section
from align_proxy.studies.record import Record, to_json
from align_proxy.studies.stats import CrossedResampler
from align_proxy.studies.store import CellResult
from align_proxy.studies.verdicts import RESOLVED, higher_is_better, metric_label

SCHEMA_VERSION = 3

__all__ = [
    "SCHEMA_VERSION", "analyse", "StudyAnalysis", "ModelSize", "MetricInfo", "BaseScore", "CellCount",
    "Completeness", "DivergedSeeds", "Fit", "Gain", "GapClosed", "Headline", "MetricTrust", "MissingCell",
    "Optimum", "Ordering", "OveroptimizationCurve", "OveroptimizationSummary", "PeakShift", "Prediction",
    "RankAgreement", "RankIntervals", "RungOptimum", "Scale", "Start", "Transfer", "TransferSummary", "TrustCandidate", "Variance",
    "VariantAtScale", "Record", "to_json",
]


@dataclass(frozen=True)
class ModelSize(Record):
    name: str
    parameters: float


@dataclass(frozen=True)
class MetricInfo(Record):
    label: str
    higher_is_better: bool | None


@dataclass(frozen=True)
class StudyAnalysis(Record):
    """Every number of a study's report. `to_json()` is report.json."""

    schema: int
    confidence: float
    n_resamples: int
    resolved_threshold: float
    models: list[ModelSize]
    target: ModelSize | None
    seeds: list[int]
    recipes: dict[str, list[str]]
    metrics: dict[str, MetricInfo]
    completeness: Completeness
    headline: list[Headline]
    base: list[BaseScore]
    gains: list[Gain]
    orderings: list[Ordering]
    transfer: list[Transfer]
    metric_trust: list[MetricTrust]
    fits: list[Fit] = field(default_factory=list)
    gap_closed: list[GapClosed] = field(default_factory=list)  # decoding-time proxy-tuning, when the spec asks
    overoptimization: OveroptimizationSummary | None = None  # best-of-n cells and RL cells against reward models
    # Who judged the judged metrics: {"judges": [{spec, path, sha256}], "weights", "num_samples"}; None: no judge.
    judge: dict | None = None
    # Each numeric grid key's optimum per rung and at the target (grids of at least 3 values only).
    optima: list[Optimum] = field(default_factory=list)

    def to_json(self) -> dict:
        """report.json; `judge` only in a judged study's and `optima` only where a grid has them, so another study's
        report reads as it always did."""
        document = super().to_json()
        for key in ("judge", "optima"):
            if not getattr(self, key):
                del document[key]
        return document

    def primary_metrics(self) -> dict[str, str]:
        """recipe -> the metric its headline is judged on."""
        return {h.recipe: h.metric for h in self.headline}


def by_kind(results: list[CellResult]) -> dict[str, list[CellResult]]:
    """Each registered cell kind's results (`kinds.CELL_KINDS`, whose entries name the section that reads them):
    the one place the analysis tells a cell's kind."""
    groups: dict[str, list[CellResult]] = {name: [] for name in CELL_KINDS}
    for cell in results:
        groups.setdefault(cell.kind, []).append(cell)
    return groups


def analyse(results: list[CellResult], models: dict[str, int], primary_metrics: dict[str, str],
            target: tuple[str, float] | None = None, confidence: float = 0.95, n_resamples: int = 2000,
            cells: list[dict] | None = None, starts: dict[str, dict] | None = None,
            rewards_from: dict[str, dict] | None = None, judge: dict | None = None) -> StudyAnalysis:
    """Every number of a study's report, as typed records (`.to_json()` is report.json).

    `results` are finished cells, diverged ones included (a `diverged` attribute of {step, loss}); `models`
    maps name -> parameters (models with no results yet count as missing); `primary_metrics` maps recipe ->
    the metric its headline is judged on; `target` is (name, parameters) to predict gains at; `cells`
    (ResultStore.cells()) lists the study's cells, else the grid is inferred; `starts` maps recipe -> the
    {"recipe", "variant"[, "model"]} its cells started from (their gains are over that model); `rewards_from` maps
    an RL recipe -> the reward recipe whose models its cells trained against (their curves are overoptimization's);
    `judge` is who judged the judged metrics (`StudySpec.judge` with each judge's identity), reported as given.
    """
    groups = by_kind(results)
    trained, proxy_cells, best_of_n_cells = groups[TRAIN], groups["proxy-tuning"], groups["best-of-n"]
    models = {**{c.model: c.parameters for c in results}, **models}
    order = sorted(models, key=lambda m: (models[m], m))
    study = Study(models, order, confidence, n_resamples)
    # One draw for the whole study, in this order: the gain section's quantities, then the proxy-tuned gains.
    resampler = CrossedResampler(n_resamples, seed=0)
    gain_section(study, trained, resampler)
    gaps = gap_closed_section(study, proxy_cells, resampler)
    orderings = ordering_section(study)
    transfer = transfer_section(study)
    fits = fit_section(study, target)
    recipes = ordered({c.recipe for c in trained}, list(primary_metrics))
    gains = sorted(study.gains.values(), key=lambda g: (g.recipe, g.variant, models[g.model], order_index(g.metric)))
    primary = {r: _primary(r, primary_metrics, gains) for r in recipes}
    headlines = [headline(r, primary[r], study, orderings, transfer, fits, target,
                          Start.of((starts or {}).get(r), (rewards_from or {}).get(r))) for r in recipes]
    optima = optima_section(study, primary, target)
    rl_against_reward_models = [c for c in trained if c.recipe in (rewards_from or {})]
    return StudyAnalysis(
        schema=SCHEMA_VERSION, confidence=confidence, n_resamples=n_resamples, resolved_threshold=RESOLVED,
        models=[ModelSize(m, models[m]) for m in order],
        target=ModelSize(*target) if target else None,
        seeds=sorted({c.seed for c in trained}),
        recipes={r: sorted({c.variant for c in trained if c.recipe == r}) for r in recipes},
        metrics={m: MetricInfo(metric_label(m), higher_is_better(m))
                 for m in ordered({g.metric for g in gains}, METRIC_ORDER)},
        completeness=completeness_section(results, order, cells), headline=headlines,
        base=base_section(trained, models, confidence, n_resamples), gains=gains,
        orderings=list(orderings.values()), transfer=transfer,
        metric_trust=metric_trust_section(study, primary), fits=fits, gap_closed=gaps,
        overoptimization=overoptimization_section(best_of_n_cells + rl_against_reward_models, models, confidence,
                                                  n_resamples), judge=judge, optima=optima)


def _primary(recipe: str, primary_metrics: dict[str, str], gains: list[Gain]) -> str:
    measured = [g.metric for g in gains if g.recipe == recipe]
    wanted = primary_metrics.get(recipe)
    return wanted if wanted in measured or not measured else measured[0]
