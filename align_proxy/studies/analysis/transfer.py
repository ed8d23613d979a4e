"""The transfer section: for each pair of models small < large, each variant's gain ratio, and how alike the two
scales order the variants (sign agreement, decision accuracy, Spearman and Kendall, with intervals)."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from itertools import combinations

import numpy as np
from scipy import stats as scipy_stats

from align_proxy.studies.analysis.study import Quantity, Study
from align_proxy.studies.record import Record
from align_proxy.studies.stats import (
    NAN_INTERVAL,
    Interval,
    decision_accuracy,
    percentile_interval,
    rank_agreement,
    ratio_interval,
    sign_agreement,
)


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


def transfer_section(study: Study) -> list[Transfer]:
    """For each pair of models small < large: gain ratios, sign and rank agreement of the variants."""
    by_recipe_metric: dict[tuple, dict[str, dict]] = defaultdict(lambda: defaultdict(dict))
    for (recipe, variant, model, metric), g in study.gains.items():
        by_recipe_metric[(recipe, metric)][model][variant] = g
    records = []
    for (recipe, metric), per_model in by_recipe_metric.items():
        present = [m for m in study.order if m in per_model]
        for small, large in combinations(present, 2):
            shared = sorted(per_model[small].keys() & per_model[large].keys())
            ratios = {}
            for v in shared:
                qs, ql = (study.quantities.get((recipe, v, m, metric)) for m in (small, large))
                ratios[v] = (ratio_interval(_with_estimate(qs), _with_estimate(ql), study.confidence)
                             if qs is not None and ql is not None else NAN_INTERVAL)
            estimates = [{v: per_model[m][v].gain.estimate for v in shared
                          if per_model[m][v].verdict != "diverges"} for m in (small, large)]
            improvements = [{v: per_model[m][v].improvement for v in shared} for m in (small, large)]
            rank_intervals = None
            if len(shared) >= 2:
                small_reps = np.stack([study.improvements(recipe, metric, small)[v] for v in shared], axis=1)
                large_reps = np.stack([study.improvements(recipe, metric, large)[v] for v in shared], axis=1)
                rank_intervals = _rank_replicates(small_reps, large_reps, study.confidence)
            ranks = rank_agreement(*[{v: _finite(x) for v, x in imp.items()} for imp in improvements])
            records.append(Transfer(recipe=recipe, metric=metric, small=small, large=large,
                                    small_parameters=study.models[small], large_parameters=study.models[large],
                                    variants=shared, ratios=ratios, sign_agreement=sign_agreement(*estimates),
                                    rank_agreement=RankAgreement(**ranks), rank_intervals=rank_intervals))
    return records


def _with_estimate(q: Quantity) -> np.ndarray:
    return np.concatenate([[q.gain.mean()], q.gain_replicates])


def _finite(x: float) -> float:
    return x if math.isfinite(x) else -1e300


def _rank_replicates(small: np.ndarray, large: np.ndarray, confidence: float) -> RankIntervals:
    """Decision accuracy, Spearman and Kendall of two orderings (variants in columns; row 0 the estimate, the
    rest replicates), each with its percentile interval over the replicates."""
    small, large = finite_ranks(small), finite_ranks(large)
    accuracy = decision_accuracy(small, large)
    rs, rl = scipy_stats.rankdata(small, axis=1), scipy_stats.rankdata(large, axis=1)
    # percentile_interval leaves the bounds undefined when some replicates are (a constant ordering).
    spearman = _row_correlation(rs, rl)
    kendall = _kendall_tau_b(small, large)
    return RankIntervals(
        decision_accuracy=percentile_interval(float(accuracy[0]), accuracy[1:], confidence),
        spearman=percentile_interval(float(spearman[0]), spearman[1:], confidence),
        kendall=percentile_interval(float(kendall[0]), kendall[1:], confidence))


def finite_ranks(values: np.ndarray) -> np.ndarray:
    """Diverging variants (-inf) rank below every other, tied with each other."""
    values = np.array(values, dtype=float)
    finite = values[np.isfinite(values)]
    floor = (finite.min() - 1.0) if finite.size else -1.0
    values[~np.isfinite(values)] = floor
    return values


def _row_correlation(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    xc, yc = x - x.mean(axis=1, keepdims=True), y - y.mean(axis=1, keepdims=True)
    denominator = np.sqrt((xc ** 2).sum(axis=1) * (yc ** 2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (xc * yc).sum(axis=1) / denominator, np.nan)


def _kendall_tau_b(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    pairs = list(combinations(range(x.shape[1]), 2))
    sx = np.stack([np.sign(x[:, i] - x[:, j]) for i, j in pairs], axis=1)
    sy = np.stack([np.sign(y[:, i] - y[:, j]) for i, j in pairs], axis=1)
    denominator = np.sqrt((sx != 0).sum(axis=1) * (sy != 0).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (sx * sy).sum(axis=1) / denominator, np.nan)
