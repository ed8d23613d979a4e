"""The words a study's report says, written when it renders: a confidence and a conclusion per recipe a
researcher can act on (an action and the claims behind it: the report joins them into one line, the console
prints one claim a line), what the overoptimization table means, and how to read the rest.

Everything here reads numbers and decisions `analysis.analyse` made (`studies/verdicts.py` decides a verdict and
the thresholds); nothing is computed from data here, and the analysis holds no prose.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

from align_proxy.studies.analysis import GapClosed, Headline, Prediction, Scale, StudyAnalysis
from align_proxy.studies.report.formatting import (format_interval, format_number, format_parameters, format_setting,
                                                   format_share, format_trend, format_trend_of_optimum, peak_shift_text,
                                                   recipe_label)
from align_proxy.studies.stats import Power
from align_proxy.studies.verdicts import RESOLVED

# Below this share of variant pairs ordered alike at both ends, small-scale rankings are not trusted.
TRUSTED_DECISION_ACCURACY = 0.75


@dataclass(frozen=True)
class Claim:
    """One claim of a recipe's conclusion: the report's words, and where those run long, a terminal's shorter form
    (`brief`) that keeps the number supporting it."""

    text: str
    brief: str = ""

    @property
    def console(self) -> str:
        return self.brief or self.text


@dataclass(frozen=True)
class RecipeVerdict:
    """A headline entry in words: its recipe as the report labels it, the confidence, what to do (`action`) and
    the claims that say why, one each."""

    label: str
    confidence: str
    action: str
    claims: tuple[Claim, ...]

    @property
    def conclusion(self) -> str:
        """The report's one line: the action, then every claim, joined as the report has always written them."""
        return f"{self.action}: {'; '.join(c.text for c in self.claims)}" if self.claims else self.action


def recipe_verdicts(analysis: StudyAnalysis) -> list[RecipeVerdict]:
    """Each headline entry's confidence and conclusion, in the headline's order."""
    return [recipe_verdict(h, analysis) for h in analysis.headline]


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


def conclusion(entry: Headline, analysis: StudyAnalysis | None = None) -> str:
    """What to do about a recipe and why, in one line; with the study's `analysis`, also whether decoding-time
    transfer works where training transfer does (`decoding_time_claims`)."""
    return recipe_verdict(entry, analysis).conclusion


def recipe_verdict(entry: Headline, analysis: StudyAnalysis | None = None) -> RecipeVerdict:
    """A recipe's action and its claims: the pattern of verdicts, divergences, the ordering of variants, what
    would resolve an unclear gain, the prediction, the starting model and decoding-time transfer."""
    label, level, scales = recipe_label(entry), confidence(entry), entry.scales
    if not scales:
        return RecipeVerdict(label, level, "no finished cells yet", ())
    claims = [pattern_claim(scales), *(Claim(note) for note in divergence_notes(scales))]
    claims += ordering_claims(entry) if entry.transfer else \
        [Claim(f"only {scales[0].model} has results, so nothing yet on transfer")]
    claims += power_claims(scales)
    claims += prediction_claims(entry.prediction) if entry.prediction else []
    claims += start_claims(entry)
    if analysis:
        claims += decoding_time_claims(decoding_time_gaps(entry, analysis),
                                       entry.transfer.transfers if entry.transfer else None)
    return RecipeVerdict(label, level, action(entry), tuple(claims))


def action(entry: Headline) -> str:
    """What to do with the recipe, from its verdict at the largest scale and the confidence."""
    return {"hurts": "do not spend a large run on it", "diverges": "do not spend a large run on it",
            "unclear": "no evidence yet to justify a large run",
            "helps": {"high": "worth a large run", "medium": "probably worth a large run",
                      "low": "promising at the largest rung, not yet consistent across scales"
                      if entry.transfer else "promising, but run more sizes before deciding"}[confidence(entry)],
            }.get(entry.scales[-1].verdict, "no evidence yet to justify a large run")


VERDICT_WORDS = {"helps": "helps", "hurts": "hurts", "unclear": "no clear effect", "diverges": "diverges",
                 "rises": "rises", "falls": "falls"}


def pattern(scales: list[Scale], name=lambda scale: scale.model) -> str:
    """The verdicts across scales in words: one for all, or the scales (each as `name` gives it) grouped by verdict."""
    verdicts = [s.verdict for s in scales]
    if len(set(verdicts)) == 1:
        word = VERDICT_WORDS[verdicts[0]]
        return f"{word} at every scale" if len(scales) > 1 else f"{word} at {scales[0].model}"
    groups = defaultdict(list)
    for s in scales:
        groups[s.verdict].append(name(s))
    return "; ".join(f"{VERDICT_WORDS[v]} at {', '.join(ms)}" for v, ms in groups.items())


def pattern_claim(scales: list[Scale]) -> Claim:
    """The pattern of verdicts; on a terminal with each scale's gain (of its best variant) beside it."""
    gain = {s.model: format_number(s.gain.estimate, True) for s in scales}
    if len({s.verdict for s in scales}) == 1:
        gains = ", ".join(f"{gain[s.model]} at {s.model}" for s in scales)
        return Claim(pattern(scales), f"{pattern(scales)} (gain {gains})")
    return Claim(pattern(scales), pattern(scales, lambda s: f"{s.model} ({gain[s.model]})"))


def divergence_notes(scales: list[Scale]) -> list[str]:
    notes = []
    for s in scales:
        for variant, info in sorted(s.diverged.items()):
            notes.append(f"{variant} diverges at {s.model} ({info.seeds}/{info.of} seeds; loss "
                         f"{info.loss:.3g} at step {info.step})")
    return notes


def ordering_claims(entry: Headline) -> list[Claim]:
    """Whether the best variant at the smallest scale is the best at the largest, and how far rankings carry."""
    transfer, scales = entry.transfer, entry.scales
    first, last = scales[0], scales[-1]
    accuracy = transfer.rank_agreement.decision_accuracy
    ranks = [] if accuracy is None or math.isnan(accuracy) else \
        [Claim(f"decision accuracy {accuracy:.2f}", f"decision accuracy {accuracy:.2f} (the share of variant pairs "
                                                    f"{first.model} and {last.model} order alike)")]
    ordering = transfer.ordering
    if ordering == "one variant":
        return [Claim(f"one variant tried ({last.best_variant})")]
    if ordering == "same":
        return [Claim(f"{first.best_variant} best at both ends (P {first.p_best:.2f} and {last.p_best:.2f})"), *ranks]
    if ordering == "changes":
        return [Claim(f"best variant changes: {first.best_variant} at {first.model} (P {first.p_best:.2f}), "
                      f"{last.best_variant} at {last.model} (P {last.p_best:.2f})"), *ranks]
    unresolved = [s for s in (first, last) if not s.resolved]
    where = " or ".join(s.model for s in unresolved)
    shares = " and ".join(f"{s.p_best:.0%}" for s in unresolved)
    needs = [s.ordering_power for s in unresolved if s.ordering_power]
    return [Claim(f"variants not distinguishable at {where} (the leader wins in {shares} of resamples, {RESOLVED:.0%} "
                  "needed), so the small proxy's choice of variant is not yet evidence",
                  f"variants not distinguishable at {where}: the leader wins in {shares} of resamples "
                  f"({RESOLVED:.0%} needed)")] + \
        ([power_claim(needs[0], "separating the top two variants", unresolved[0].model)] if needs else [])


def power_claims(scales: list[Scale]) -> list[Claim]:
    return [power_claim(s.power, f"resolving {s.gain.estimate:+.3f}", s.model) for s in scales
            if s.verdict == "unclear" and s.power]


def power_claim(power: Power, what: str, model: str) -> Claim:
    """The seeds or held-out items that would resolve `what` at `model` with 80% power, or that none would."""
    options = []
    if power.seeds is not None:
        options.append(f"{power.seeds} seeds")
    if power.items is not None:
        options.append(f"{power.items} held-out items")
    if not options and power.together:
        seeds, items = power.together
        return Claim(f"{what} at {model} needs about {seeds} seeds and {items} held-out items together (80% power)")
    if not options:
        return Claim(f"{what} at {model} is beyond any practical number of seeds or items (the design resolves "
                     f"effects of about {power.detectable:.3f})",
                     f"{what} at {model}: out of practical reach (the design resolves effects of about "
                     f"{power.detectable:.3f})")
    return Claim(f"{what} at {model} needs about {' or '.join(options)} (80% power)")


def prediction_claims(prediction: Prediction) -> list[Claim]:
    """The trend's word at the target: a size with its interval, or a direction and why its size is not one."""
    g = prediction.gain
    factor = prediction.extrapolation_factor
    reach = f"{factor:.0f}x beyond the largest rung" if factor > 1 else "within the rungs"
    if prediction.trusted:
        return [Claim(f"predicted {g.estimate:+.3f} [{g.low:+.3f}, {g.high:+.3f}] at {prediction.target} "
                      f"for {prediction.variant} ({reach})")]
    # Past the metric's range comes first among the analysis's reasons ("; "-joined); the other is the rungs' scatter.
    interval = f"[{g.low:+.3f}, {g.high:+.3f}]"
    also = ", and the rungs stray from the line" if "; " in prediction.untrusted_because else ""
    why = (f"its interval {interval} leaves the metric's range{also}" if prediction.beyond_range else
           f"the rungs stray from the line beyond their noise, widening its interval to {interval}")
    return [Claim(f"at {prediction.target} ({reach}) the trend says {prediction.direction} with probability "
                  f"{prediction.direction_probability:.2f} for {prediction.variant}"),
            Claim(f"its size is not an estimate ({prediction.untrusted_because})",
                  f"size not estimated: {why}")]


def start_claims(entry: Headline) -> list[Claim]:
    """What the gains are measured over, where every cell started from a trained model."""
    start = entry.starts_from
    if not start:
        return []
    if not start.model:
        return [Claim(f"gains are over the model {start.recipe} ({start.variant}) trained, which each cell "
                      "started from")]
    return [Claim(f"gains are over the model {start.recipe} ({start.variant}) trained on {start.model}, which "
                  "every cell started from")] + \
        ([Claim(f"a scale here is the size of the {start.reward_from} model it trained against")]
         if start.reward_from else [])


def decoding_time_clause(gaps: list, training_transfers: str | None) -> str:
    """Whether decoding-time transfer (proxy-tuning the largest model by each smaller model's tuning, records.GapClosed
    on the headline's metric) works where training transfer does: 'works' when the gap-closed interval lies above
    zero, 'hurts' below, else 'unclear'.

    >>> from align_proxy.studies.stats import Interval
    >>> g = GapClosed("sft", "default", "task_accuracy", "s", "l", 1, 4, 1.0, 3, 0.3, 0.4, 0.5, 0.2,
    ...               Interval(0.5, 0.2, 0.8))
    >>> print(decoding_time_clause([g], "yes"))  # doctest: +NORMALIZE_WHITESPACE
    decoding-time transfer (l proxy-tuned by the smaller model, alpha 1): works from s, closing 50% [20%, 80%]
    of the gap to l tuned directly; training transfer: yes
    >>> print(decoding_time_claims([g], "yes")[0].console)
    proxy-tuning l (alpha 1) works from s: closes 50% [20%, 80%] of the gap to l tuned directly
    """
    return "; ".join(c.text for c in decoding_time_claims(gaps, training_transfers))


def decoding_time_claims(gaps: list, training_transfers: str | None) -> list[Claim]:
    """`decoding_time_clause` as claims: one per smaller model, then training transfer's word beside them."""
    if not gaps:
        return []
    claims = []
    for g in gaps:
        iv = g.gap_closed
        word = "works" if iv.low > 0 else "hurts" if iv.high < 0 else "unclear"
        text = f"{word} from {g.small}, closing {format_share(iv)} of the gap to {g.large} tuned directly"
        claims.append(Claim(text, f"proxy-tuning {g.large} (alpha {g.alpha:g}) {word} from {g.small}: closes "
                                  f"{format_share(iv)} of the gap to {g.large} tuned directly"))
    first = claims[0]
    claims[0] = Claim(f"decoding-time transfer ({gaps[0].large} proxy-tuned by the smaller model, alpha "
                      f"{gaps[0].alpha:g}): {first.text}", first.brief)
    return claims + [Claim(f"training transfer: {training_transfers or 'not measured'}")]


def decoding_time_gaps(entry: Headline, analysis: StudyAnalysis) -> list[GapClosed]:
    """The gaps closed a headline speaks of: to the study's largest model, on the headline's metric and
    recommended variant (else the first variant proxy-tuned), at alpha 1 or else the smallest alpha."""
    largest = analysis.models[-1].name if analysis.models else None
    mine = [g for g in analysis.gap_closed if (g.recipe, g.metric) == (entry.recipe, entry.metric) and
            g.large == largest]
    if not mine:
        return []
    recommended = entry.recommended_variant
    variant = recommended if any(g.variant == recommended for g in mine) else mine[0].variant
    alphas = sorted({g.alpha for g in mine if g.variant == variant})
    alpha = 1.0 if 1.0 in alphas else alphas[0]
    return [g for g in mine if (g.variant, g.alpha) == (variant, alpha)]


# --- the rest of the report's words ---------------------------------------------------------------------

def overoptimization_lines(analysis: StudyAnalysis) -> list[str]:
    """What the overoptimization table means: the trend with size, whether the peak moves, and what the intervals
    cover."""
    summary = analysis.overoptimization
    level = f"{analysis.confidence:.0%}"
    lines = [f"alpha and beta are Gao et al.'s coefficients (best-of-n: R = d (alpha - beta d); RL: R = d (alpha - "
             f"beta log d)) fitted to the gold reward's gain over the starting policy; peak d* is where that gain is "
             f"highest within the d measured (where some resamples still rise at the last d, their peaks lie past "
             f"the data and a bound reaching into them is open: `>d`, `past the data`, inf). Intervals ({level}) "
             f"resample the held-out prompts; a curve's reward model and, for RL, its training run are one draw "
             f"each, so their spread is not in them. Against "
             f"reward-model size, each coefficient is a line through one point per size on log10(parameters), its "
             f"interval the line's own (sizes - 2 degrees of freedom), which holds every source of scatter."]
    lines += [format_trend(t) for t in summary.trends]
    if not summary.trends:
        lines.append("alpha and beta against size need fitted curves at 3 or more reward-model sizes")
    lines += [peak_shift_text(shift) for shift in summary.peak_shifts]
    return lines


def optimum_lines(analysis: StudyAnalysis) -> list[str]:
    """Per recipe and grid key, what to use at the target (or why the grid does not say): one claim per line."""
    lines = []
    for o in analysis.optima:
        held = "".join(f", {k}={v:g}" if isinstance(v, float) else f", {k}={v}" for k, v in o.fixed.items())
        name = f"{o.recipe} {o.key}{held}"
        if not o.located:
            lines.append(f"{name}: not located: {o.not_located_because}")
            continue
        trend = format_trend_of_optimum(o)
        if o.prediction is None:
            lines.append(f"{name}: {trend}; the optimum per rung is in the table")
        elif o.to_narrow is None:
            lines.append(f"{name}: at {o.target} use {format_setting(o.prediction)}; {trend}")
        else:
            lines.append(f"{name}: at {o.target} about {format_setting(o.prediction)}, too wide to act on; {trend}")
        if o.cost_of_keeping is not None:
            lines.append(f"{name}: keeping {o.rungs[0].model}'s best ({o.smallest_best:.3g}) at {o.target}: "
                         f"{o.metric} {format_interval(o.cost_of_keeping)} (if the curve keeps {o.rungs[-1].model}'s "
                         "shape)")
        if o.to_narrow:
            lines.append(f"{name}: {o.to_narrow}")
    return lines


def summary_lines(analysis: StudyAnalysis) -> list[str]:
    """What the study is: its models, how many cells finished, and what its intervals are."""
    done = analysis.completeness
    target = analysis.target
    models = ", ".join(f"{m.name} ({format_parameters(m.parameters)})" for m in analysis.models)
    return [f"Models: {models}.",
            f"Cells finished: {done.done} of {done.expected} ({done.expected_from}); seeds: "
            f"{', '.join(map(str, analysis.seeds)) or 'none'}.",
            f"Intervals: {analysis.confidence:.0%}, {analysis.n_resamples} crossed resamples (items shared, "
            f"seeds t-scaled). Target size: "
            + (f"{target.name} ({format_parameters(target.parameters)})." if target else "none named.")]


def partial_lines(analysis: StudyAnalysis, limit: int = 12) -> list[str]:
    """A partial study's warning: which cells are missing, so every number may still move."""
    done = analysis.completeness
    if done.complete:
        return []
    if not done.expected:
        return ["No finished cells yet: there is nothing to analyse."]
    missing = [f"{m.recipe} {m.variant} on {m.model} seed {m.seed} ({m.status}{f': {m.cause}' if m.cause else ''})"
               for m in done.missing]
    more = f" and {len(missing) - limit} more" if len(missing) > limit else ""
    without = done.models_without_results
    return [f"Partial study: {len(missing)} of {done.expected} cells are not finished, so every number below "
            f"may change. Missing: {'; '.join(missing[:limit])}{more}."] + \
        ([f"No results yet for: {', '.join(without)}."] if without else [])


HOW_TO_READ = [
    "Gain is the trained model's score minus its base model's, on the same held-out items. Every seed is "
    "scored on the same items and the base once, so an item's difficulty is shared by all seeds and does not "
    "average away; each seed is its own training run. The interval resamples as the data were made: one draw "
    "of items shared by every cell, and the seed spread (net of item noise) as a Student t with seeds - 1 "
    "degrees of freedom, since 3 to 5 seeds cannot show their own spread well. In simulations of this design "
    "nominal 95% intervals cover the true gain 94-97% of the time (tests/test_calibration.py). 'helps' / "
    "'hurts' means the interval excludes zero on the better / worse side (for completion NLL lower is better); "
    "'unclear' means it does not, or there was one number only; 'diverges' means training stopped on an "
    "exploding loss in at least one seed (that variant then ranks below every variant that did not). "
    "Every interval is over held-out items and fine-tuning seeds for the base models this study ran on; "
    "pretraining randomness (another base model of the same recipe and size) is not in it. A study on "
    "other base models, such as a ladder pretrained with other summation orders, can move a verdict that sits "
    "near its line.",
    "The headline judges each recipe on its primary metric with the best variant at each scale; picking the "
    "best of several variants flatters it a little, so a narrow 'helps' for one variant deserves a rerun. "
    "P(best) is the share of resamples in which a variant wins; a winner is named, and a change of winner "
    "across scales is said, only when it wins in at least 95% of them at each scale.",
    "For an unclear gain or ordering, 'to resolve' is the number of seeds (at the current item count) or "
    "held-out items (at the current seeds) that would resolve the observed difference with 80% power at the "
    "measured noise; more seeds cannot shrink item noise shared by every seed, so sometimes only items help.",
    "Decision accuracy (as in DataDecide) is the share of variant pairs the smallest and largest model order "
    "the same way: 1 means choosing a variant on the small model picks what the large model prefers, 0.5 is "
    "a coin flip; its interval and those of Kendall and Spearman come from the same resamples. 'Which "
    "small-scale metric to trust' asks it of every metric measured on the smallest model against the judged "
    "metric on the largest. The gain ratio is the large model's gain over the small one's (undefined when "
    "the small gain's resamples reach zero).",
    "The fit is gain against log10(parameters), one point per model (its seeds share items, so they are not "
    "independent points). Its prediction interval has two parts: the line refitted on every resample of the "
    "gains (how well each rung's gain is known), and the rungs' scatter about the line beyond that noise, "
    "with models - 2 degrees of freedom; it is never narrower than the first alone, and R² decides nothing "
    "(three noisy points can line up by chance). From three tiny rungs to a model hundreds of times larger it "
    "is an extrapolation: when the interval leaves the range the metric can gain, or the target is over 10x "
    "past the largest rung and the scatter beyond noise more than doubles the interval, only its direction "
    "and that direction's probability are given.",
]
