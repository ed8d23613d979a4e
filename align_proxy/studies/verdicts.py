"""The words a study's report and CLI say: a verdict per gain, and a conclusion per recipe a researcher can act on.

Everything here reads numbers `analysis.analyse` computed; nothing is computed from data here. A word is
said only when the numbers resolve it: a gain 'helps' when its interval excludes zero, a winning variant
'is best' when it wins in at least `RESOLVED` of the replicates, a prediction far past the rungs is given
as a direction with its probability, not as a size.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import TYPE_CHECKING

from align_proxy.metrics import metric
from align_proxy.studies.stats import Interval, Power

if TYPE_CHECKING:  # the analysis imports this module: its records are annotations here only
    from align_proxy.studies.analysis import Headline, Prediction, Scale

# A variant is called the winner at a scale when it is best in at least this share of the replicates;
# a winner "changes" across scales only when it is resolved at both.
RESOLVED = 0.95
# Below this share of variant pairs ordered alike at both ends, small-scale rankings are not trusted.
TRUSTED_DECISION_ACCURACY = 0.75
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


# --- a recipe's conclusion ----------------------------------------------------------------------------

def confidence(entry: Headline) -> str:
    """high: one decisive verdict at every scale, no resolved change of the best variant, rankings that carry,
    and a prediction whose direction agrees with probability >= RESOLVED; medium: the same decisive verdict at
    the smallest and largest scale; low: anything else."""
    transfer = entry.transfer
    if transfer is None or transfer.transfers != "yes":
        return "low"
    accuracy = transfer.rank_agreement.decision_accuracy
    ranks_ok = accuracy is None or math.isnan(accuracy) or accuracy >= TRUSTED_DECISION_ACCURACY
    every_scale = len({s.verdict for s in entry.scales}) == 1
    prediction = entry.prediction
    prediction_ok = prediction is None or prediction.direction_probability >= RESOLVED and \
        prediction.direction == transfer.verdict_largest
    steady = transfer.ordering != "changes"
    return "high" if every_scale and ranks_ok and prediction_ok and steady else "medium"


def conclusion(entry: Headline) -> str:
    scales = entry.scales
    if not scales:
        return "no finished cells yet"
    largest = scales[-1].verdict
    action = {"hurts": "do not spend a large run on it", "diverges": "do not spend a large run on it",
              "unclear": "no evidence yet to justify a large run",
              "helps": {"high": "worth a large run", "medium": "probably worth a large run",
                        "low": "promising at the largest rung, not yet consistent across scales"
                        if entry.transfer else "promising, but run more sizes before deciding"}[entry.confidence],
              }.get(largest, "no evidence yet to justify a large run")
    parts = [f"{action}: {pattern(scales)}"]
    parts += divergence_notes(scales)
    if entry.transfer:
        parts.append(ordering_note(entry))
    else:
        parts.append(f"only {scales[0].model} has results, so nothing yet on transfer")
    parts += power_notes(scales)
    if entry.prediction:
        parts.append(prediction_note(entry.prediction))
    start = entry.starts_from
    if start and start.model:
        parts.append(f"gains are over the model {start.recipe} ({start.variant}) trained on {start.model}, which "
                     "every cell started from" + (f"; a scale here is the size of the {start.reward_from} model it "
                                                  "trained against" if start.reward_from else ""))
    elif start:
        parts.append(f"gains are over the model {start.recipe} ({start.variant}) trained, which each cell "
                     "started from")
    return "; ".join(p for p in parts if p)


def pattern(scales: list[Scale]) -> str:
    verdicts = [s.verdict for s in scales]
    words = {"helps": "helps", "hurts": "hurts", "unclear": "no clear effect", "diverges": "diverges",
             "rises": "rises", "falls": "falls"}
    if len(set(verdicts)) == 1:
        word = words[verdicts[0]]
        return f"{word} at every scale" if len(scales) > 1 else f"{word} at {scales[0].model}"
    groups = defaultdict(list)
    for s in scales:
        groups[s.verdict].append(s.model)
    return "; ".join(f"{words[v]} at {', '.join(ms)}" for v, ms in groups.items())


def divergence_notes(scales: list[Scale]) -> list[str]:
    notes = []
    for s in scales:
        for variant, info in sorted(s.diverged.items()):
            notes.append(f"{variant} diverges at {s.model} ({info.seeds}/{info.of} seeds; loss "
                         f"{info.loss:.3g} at step {info.step})")
    return notes


def ordering_note(entry: Headline) -> str:
    transfer, scales = entry.transfer, entry.scales
    first, last = scales[0], scales[-1]
    accuracy = transfer.rank_agreement.decision_accuracy
    ranks = "" if accuracy is None or math.isnan(accuracy) else f"; decision accuracy {accuracy:.2f}"
    ordering = transfer.ordering
    if ordering == "one variant":
        return f"one variant tried ({last.best_variant})"
    if ordering == "same":
        return f"{first.best_variant} best at both ends (P {first.p_best:.2f} and {last.p_best:.2f}){ranks}"
    if ordering == "changes":
        return (f"best variant changes: {first.best_variant} at {first.model} (P {first.p_best:.2f}), "
                f"{last.best_variant} at {last.model} (P {last.p_best:.2f}){ranks}")
    unresolved = [s for s in (first, last) if not s.resolved]
    where = " or ".join(s.model for s in unresolved)
    shares = " and ".join(f"{s.p_best:.0%}" for s in unresolved)
    return (f"variants not distinguishable at {where} (the leader wins in {shares} of resamples, {RESOLVED:.0%} "
            f"needed), so the small proxy's choice of variant is not yet evidence{_ordering_power(unresolved)}")


def _ordering_power(scales: list[Scale]) -> str:
    needs = [s.ordering_power for s in scales if s.ordering_power]
    return f"; {_power_phrase(needs[0], 'separating the top two variants', scales[0].model)}" if needs else ""


def power_notes(scales: list[Scale]) -> list[str]:
    notes = []
    for s in scales:
        if s.verdict == "unclear" and s.power:
            notes.append(_power_phrase(s.power, f"resolving {s.gain.estimate:+.3f}", s.model))
    return notes


def _power_phrase(power: Power, what: str, model: str) -> str:
    options = []
    if power.seeds is not None:
        options.append(f"{power.seeds} seeds")
    if power.items is not None:
        options.append(f"{power.items} held-out items")
    if not options and power.together:
        seeds, items = power.together
        return f"{what} at {model} needs about {seeds} seeds and {items} held-out items together (80% power)"
    if not options:
        return (f"{what} at {model} is beyond any practical number of seeds or items (the design resolves "
                f"effects of about {power.detectable:.3f})")
    return f"{what} at {model} needs about {' or '.join(options)} (80% power)"


def prediction_note(prediction: Prediction) -> str:
    g = prediction.gain
    factor = prediction.extrapolation_factor
    reach = f"{factor:.0f}x beyond the largest rung" if factor > 1 else "within the rungs"
    if prediction.trusted:
        return (f"predicted {g.estimate:+.3f} [{g.low:+.3f}, {g.high:+.3f}] at {prediction.target} "
                f"for {prediction.variant} ({reach})")
    return (f"at {prediction.target} ({reach}) the trend says {prediction.direction} with probability "
            f"{prediction.direction_probability:.2f} for {prediction.variant}; its size is not an estimate "
            f"({prediction.untrusted_because})")


def decoding_time_clause(gaps: list, training_transfers: str | None) -> str:
    """Whether decoding-time transfer (proxy-tuning the largest model by each smaller model's tuning, analysis.GapClosed
    on the headline's metric) works where training transfer does: 'works' when the gap-closed interval lies above
    zero, 'hurts' below, else 'unclear'.

    >>> from align_proxy.studies.analysis import GapClosed
    >>> g = GapClosed("sft", "default", "task_accuracy", "s", "l", 1, 4, 1.0, 3, 0.3, 0.4, 0.5, 0.2,
    ...               Interval(0.5, 0.2, 0.8))
    >>> decoding_time_clause([g], "yes")
    'decoding-time transfer (l proxy-tuned by the smaller model, alpha 1): works from s, closing 50% [20%, 80%] of the gap to l tuned directly; training transfer: yes'
    """
    from align_proxy.studies.formatting import format_share

    if not gaps:
        return ""
    parts = []
    for g in gaps:
        iv = g.gap_closed
        word = "works" if iv.low > 0 else "hurts" if iv.high < 0 else "unclear"
        parts.append(f"{word} from {g.small}, closing {format_share(iv)} of the gap to {g.large} tuned directly")
    return (f"decoding-time transfer ({gaps[0].large} proxy-tuned by the smaller model, alpha {gaps[0].alpha:g}): "
            f"{'; '.join(parts)}; training transfer: {training_transfers or 'not measured'}")
