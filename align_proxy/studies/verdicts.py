"""The decisions a study's analysis makes from its numbers: a verdict per gain, a direction, and the thresholds
that say when a winner or a prediction is resolved. The words a report says about them are
`studies/report/prose.py`'s: the analysis decides, the report words it.

A word is decided only when the numbers resolve it: a gain 'helps' when its interval excludes zero, a winning
variant 'is best' when it wins in at least `RESOLVED` of the replicates, a prediction far past the rungs is
given as a direction with its probability, not as a size.
"""

from __future__ import annotations

import math

from align_proxy.metrics import metric
from align_proxy.studies.stats import Interval

# A variant is called the winner at a scale when it is best in at least this share of the replicates;
# a winner "changes" across scales only when it is resolved at both.
RESOLVED = 0.95
# A prediction further than this many times the largest rung's size is stated as a direction only when the rungs'
# lack of fit beyond their noise widens its interval more than LACK_OF_FIT_WIDENING times (the lack of fit is
# then a guess from k - 2 degrees of freedom that the size rests on).
FAR_EXTRAPOLATION = 10.0
LACK_OF_FIT_WIDENING = 2.0


def higher_is_better(name: str) -> bool | None:
    """True or False; None for a metric with no better direction (KL to the reference, length)."""
    return metric(name).higher_is_better


def metric_label(name: str) -> str:
    return metric(name).label


def verdict(gain: Interval, metric: str, n_values: int = 2) -> str:
    """'helps' / 'hurts' when the interval excludes 0 on the better / worse side, else 'unclear'.

    A single number (one seed, no per-item scores) has no spread to judge by, so it is 'unclear'.

    >>> verdict(Interval(0.1, 0.02, 0.2), "task_accuracy"), verdict(Interval(-0.1, -0.2, -0.05), "completion_nll")
    ('helps', 'helps')
    """
    if n_values < 2 or math.isnan(gain.low) or math.isnan(gain.high):
        return "unclear"
    if higher_is_better(metric) is None:  # KL, response length: a change, neither good nor bad
        return "rises" if gain.low > 0 else "falls" if gain.high < 0 else "unclear"
    sign = 1.0 if higher_is_better(metric) else -1.0
    low, high = sorted((sign * gain.low, sign * gain.high))
    return "helps" if low > 0 else "hurts" if high < 0 else "unclear"


def improvement(gain: float, metric: str) -> float:
    """The gain signed so that larger is better, whatever the metric's direction."""
    return gain if higher_is_better(metric) is not False else -gain


def direction(estimate: float, metric: str) -> str:
    value = improvement(estimate, metric)
    # Float noise of an exactly-zero planted or tied gain is no direction.
    return "same" if abs(value) < 1e-12 else "better" if value > 0 else "worse"
