"""The gap closed by proxy-tuning in one standalone comparison (`align-proxy proxy-tune --tuned`): the analysis of
`align_proxy.proxy_tuning.score_proxy_tuning`'s scores, as `analysis.GapClosed`. A study's proxy-tuning cells
are analysed with their seeds instead (`align_proxy.studies.analysis`)."""

from __future__ import annotations

import numpy as np

from align_proxy.studies.analysis import GapClosed
from align_proxy.studies.stats import CrossedResampler, gap_closed


def gap_closed_records(scores, recipe: str, variant: str, small: str, large: str,
                       small_parameters: int, large_parameters: int, alpha: float, confidence: float = 0.95):
    """One `analysis.GapClosed` per metric the three models share (`stats.gap_closed` on per-item differences) of
    `scores` (`align_proxy.proxy_tuning.ProxyTuningScores`); none without the tuned large model's scores."""
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
