"""The typed results of a study's analysis: what `analysis.analyse` returns and the report, the plots, the
verdict prose and the CLI read.

Each record is a frozen dataclass, so a misspelt or renamed field fails where it is read (and in a type
checker), not while a report renders. `to_json()` gives report.json's form: field names as keys, undefined
numbers (nan, inf) as null, so `json.dumps(record.to_json(), allow_nan=False)` works. Intervals are
`stats.Interval` and designs `stats.Power` inside a record; both serialise themselves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, is_dataclass

import numpy as np

from align_proxy.studies.overoptimization import Overoptimization, SizeTrend, form_label
from align_proxy.studies.stats import Interval, Power


def to_json(value):
    """Records, intervals, dicts, lists and numpy scalars as JSON-ready Python (nan and inf become None).

    >>> to_json({"a": Interval(0.5, float("nan"), 1.0), "b": (np.float64(2.0), np.int64(3))})
    {'a': {'estimate': 0.5, 'low': None, 'high': 1.0}, 'b': [2.0, 3]}
    """
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return to_json(value.tolist())
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


class Record:
    """What every analysis record shares: its JSON form."""

    def to_json(self) -> dict:
        return to_json(self)


# --- one recipe variant on one model and metric ----------------------------------------------------------

@dataclass(frozen=True)
class Divergence(Record):
    """How a variant's training diverged at one model: in `seeds` of its `of` seeds, first at `step`."""

    seeds: int
    of: int
    step: int | None
    loss: float | None
    seed_list: list[int]


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
    diverged: Divergence | None
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


# --- across variants and scales ---------------------------------------------------------------------------

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


@dataclass(frozen=True)
class RankAgreement(Record):
    """How alike two scales order the variants, on the point estimates."""

    spearman: float
    kendall: float
    decision_accuracy: float
    n_variants: int


@dataclass(frozen=True)
class RankIntervals(Record):
    """The same three statistics with intervals over the study's resamples."""

    decision_accuracy: Interval
    spearman: Interval
    kendall: Interval


@dataclass(frozen=True)
class Transfer(Record):
    """One recipe and metric from a small model to a larger one: gain ratios and agreement of the variants."""

    recipe: str
    metric: str
    small: str
    large: str
    small_parameters: int
    large_parameters: int
    variants: list[str]
    ratios: dict[str, Interval]
    sign_agreement: float
    rank_agreement: RankAgreement
    rank_intervals: RankIntervals | None


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


@dataclass(frozen=True)
class Fit(Record):
    """gain ~ log10(parameters) for one recipe variant and metric, one point per model, and its prediction at
    the study's target size (None without a target), sized by `scale.fit_line_across_sizes`."""

    recipe: str
    variant: str
    metric: str
    points: list[tuple[int, float]]
    slope: float
    slope_interval: Interval
    intercept: float
    r_squared: float
    n_points: int
    degrees_of_freedom: int
    lack_of_fit: float  # the points' scatter about the line beyond their measurement noise (scale.py)
    target: str | None
    target_parameters: float | None
    extrapolation_factor: float | None
    prediction: Interval | None  # measurement and lack of fit together: the interval the report quotes
    measurement: Interval | None  # the line refitted on every replicate of the points, alone
    probability_positive: float | None
    prediction_trusted: bool | None


@dataclass(frozen=True)
class Prediction(Record):
    """The headline's word at the target size: a number when trusted, else a direction and its probability."""

    target: str
    target_parameters: float
    variant: str
    gain: Interval
    extrapolation_factor: float
    verdict: str
    direction: str
    direction_probability: float
    trusted: bool
    untrusted_because: str | None
    beyond_range: bool


# --- the headline -------------------------------------------------------------------------------------------

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
    diverged: dict[str, Divergence]
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


@dataclass(frozen=True)
class OveroptimizationCurve(Record):
    """One proxy reward model's overoptimization curve in a study (`overoptimization.Curve`): best-of-n (a
    best-of-n cell: points are n) or RL (a cell trained against the reward model with --curve_every: points are
    steps). Gold and proxy reward are means over prompts; `fit` is Gao et al.'s form on the gold gain."""

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
    def of(cls, curve, recipe: str = "", variant: str = "", seed: int = 0) -> OveroptimizationCurve:
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


@dataclass(frozen=True)
class Headline(Record):
    """A recipe's answer: its verdict per scale, whether it transfers, and the prediction. Its confidence and
    conclusion in words are the report's (`report/prose.py`), written when it renders; report.json adds them
    as each entry's last two keys."""

    recipe: str
    metric: str
    metric_label: str
    higher_is_better: bool | None
    scales: list[Scale]
    recommended_variant: str | None
    transfer: TransferSummary | None
    prediction: Prediction | None
    starts_from: Start | None = None


# --- the study ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelSize(Record):
    name: str
    parameters: float


@dataclass(frozen=True)
class MetricInfo(Record):
    label: str
    higher_is_better: bool | None


@dataclass(frozen=True)
class CellCount(Record):
    recipe: str
    model: str
    done: int
    expected: int
    diverged: int


@dataclass(frozen=True)
class MissingCell(Record):
    recipe: str
    variant: str
    model: str
    seed: int
    status: str


@dataclass(frozen=True)
class Completeness(Record):
    """Cells finished against the study's grid (or, without the store's cell list, the grid the results imply)."""

    expected: int
    done: int
    complete: bool
    diverged: int
    expected_from: str
    by_recipe_model: list[CellCount]
    missing: list[MissingCell]
    models_without_results: list[str]


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

    def primary_metrics(self) -> dict[str, str]:
        """recipe -> the metric its headline is judged on."""
        return {h.recipe: h.metric for h in self.headline}
