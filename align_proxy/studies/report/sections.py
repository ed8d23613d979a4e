"""The report's sections, declared once and in order: what each draws from the analysis (a table, lines of
prose, the plots) and whether a study has it. The HTML page, the Markdown summary and the console walk this
one list (`html.py`, `markdown.py`, `console.py`), so a section has one title everywhere and a new section is
one entry here.

A table is (headers, rows); a cell is its text, or (text, css class) where the HTML colours it by a verdict.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from align_proxy.studies.analysis import Headline, Prediction, Scale, StudyAnalysis, Transfer, TransferSummary
from align_proxy.studies.report import prose
from align_proxy.studies.report.formatting import (format_interval, format_number, format_parameters, format_setting,
                                                   format_share, format_trend_of_optimum, overoptimization_rows,
                                                   recipe_label)
from align_proxy.studies.stats import Power

Table = tuple[list[str], list[list]]


def _always(analysis: StudyAnalysis) -> bool:
    return True


@dataclass(frozen=True)
class Section:
    """One section of the report.

    `table(analysis, primary_only)` gives its table (primary_only: the recipes' primary metrics alone, as the
    Markdown summary shows them; a table not split by metric ignores it); `lines` a bulleted list of prose under
    it; `verdicts` the headline's conclusion per recipe; `per_recipe` a subsection per headline entry; `plots`
    that the plots go here; `paragraphs` prose paragraphs. `summary`: the Markdown summary shows it (the HTML
    shows every section); `detail`: one of the tables after the plots, which the Markdown summary gathers under
    "Key numbers"; `console`: `align-proxy study` and `align-proxy report` print it."""

    id: str
    title: str
    table: Callable[[StudyAnalysis, bool], Table] | None = None
    lines: Callable[[StudyAnalysis], list[str]] | None = None
    verdicts: bool = False
    per_recipe: Callable[[StudyAnalysis, Headline], Table] | None = None
    plots: bool = False
    paragraphs: list[str] | None = None
    present: Callable[[StudyAnalysis], bool] = _always
    summary: bool = True
    detail: bool = False
    console: bool = False


# --- the tables ------------------------------------------------------------------------------------

def _verdict_cell(scale: Scale | None, variant: str | None = None) -> tuple[str, str] | str:
    if scale is None:
        return "no results"
    lines = [scale.verdict, format_interval(scale.gain)] + ([variant] if variant else [])
    return "\n".join(lines), scale.verdict


def _headline_table(analysis: StudyAnalysis, primary_only: bool = False) -> Table:
    target = analysis.target
    headers = (["recipe", "metric"] + [f"{m.name} ({format_parameters(m.parameters)})" for m in analysis.models] +
               ["transfers (smallest to largest)", "decision accuracy",
                f"predicted gain at {target.name}" if target else "prediction", "confidence"])
    rows = []
    for h in analysis.headline:
        scales = {s.model: s for s in h.scales}
        rows.append([recipe_label(h), h.metric_label] +
                    [_verdict_cell(scales.get(m.name), scales[m.name].best_variant if m.name in scales else None)
                     for m in analysis.models] +
                    [h.transfer.transfers if h.transfer else "one scale only", _accuracy_text(h.transfer),
                     _prediction_text(h.prediction), (prose.confidence(h), prose.confidence(h))])
    return headers, rows


def _accuracy_text(transfer: TransferSummary | None) -> str:
    if transfer is None:
        return "n/a"
    if transfer.rank_intervals:
        return format_interval(transfer.rank_intervals.decision_accuracy, signed=False)
    return format_number(transfer.rank_agreement.decision_accuracy, digits=2)


def _prediction_text(prediction: Prediction | None) -> str:
    if not prediction:
        return "n/a"
    if prediction.trusted:
        return format_interval(prediction.gain)
    return f"{prediction.direction} (P {prediction.direction_probability:.2f}); size not estimable"


def _variant_table(analysis: StudyAnalysis, entry: Headline) -> Table:
    def cell(scale: Scale, variant: str):
        row = scale.variants.get(variant)
        if row is None:
            return "no results"
        best = f"\nP(best) {row.p_best:.2f}" if row.p_best is not None and len(scale.variants) > 1 else ""
        return f"{row.verdict}\n{format_interval(row.gain)}{best}", row.verdict

    rows = [[variant] + [cell(s, variant) for s in entry.scales] for variant in analysis.recipes[entry.recipe]]
    return ["variant"] + [s.model for s in entry.scales], rows


def _ordering_table(analysis: StudyAnalysis, primary_only: bool = False) -> Table:
    rows = []
    for o in analysis.orderings:
        if len(o.variants) < 2:
            continue
        chances = ", ".join(f"{v} {o.p_best[v]:.2f}" for v in o.variants)
        rows.append([o.recipe, o.metric, o.model, chances, o.leader, "yes" if o.resolved else "no",
                     _power_text(o.power)])
    return ["recipe", "metric", "model", "P(best) per variant", "leader", "resolved", "to resolve"], rows


def _power_text(power: Power | None) -> str:
    if not power:
        return ""
    options = [f"{power.seeds} seeds" if power.seeds else None, f"{power.items} items" if power.items else None]
    options = [o for o in options if o]
    if not options and power.together:
        return f"{power.together[0]} seeds and {power.together[1]} items together"
    return " or ".join(options) if options else f"out of reach (detectable: {power.detectable:.3f})"


def _power_table(analysis: StudyAnalysis, primary_only: bool = False) -> Table:
    rows = [[g.recipe, g.variant, g.model, g.metric, format_interval(g.gain), format_number(g.variance.standard_error),
             format_number(g.power.detectable), str(g.power.seeds or "-"), str(g.power.items or "-")]
            for g in analysis.gains if g.power]
    return ["recipe", "variant", "model", "metric", "gain", "standard error", "resolvable now",
            "seeds needed (at the current items)", "items needed (at the current seeds)"], rows


def _trust_table(analysis: StudyAnalysis, primary_only: bool = False) -> Table:
    rows = [[t.recipe, f"{t.judged} at {t.large}", f"{c.metric} at {t.small}", str(c.n_variants),
             format_interval(c.decision_accuracy, signed=False)]
            for t in analysis.metric_trust for c in t.candidates]
    return ["recipe", "judged on", "small-scale metric", "variants", "decision accuracy"], rows


def _gain_table(analysis: StudyAnalysis, primary_only: bool = False) -> Table:
    rows = [[g.recipe, g.variant, g.model, g.metric, str(g.n_seeds), str(g.n_items or "aggregate"),
             format_number(g.base_mean), format_interval(g.trained, signed=False),
             (format_interval(g.gain), g.verdict), g.verdict] for g in analysis.gains]
    return ["recipe", "variant", "model", "metric", "seeds", "items", "base", "trained", "gain", "verdict"], rows


def _primary_only(analysis: StudyAnalysis, records: list, primary_only: bool) -> list:
    primary = analysis.primary_metrics()
    return [r for r in records if not primary_only or primary.get(r.recipe) == r.metric]


def _ratio_table(analysis: StudyAnalysis, primary_only: bool = False) -> Table:
    rows = [[t.recipe, t.metric, f"{t.small} to {t.large}", v, format_interval(iv, signed=False)]
            for t in _primary_only(analysis, analysis.transfer, primary_only) for v, iv in t.ratios.items()]
    return ["recipe", "metric", "scales", "variant", "gain ratio (large / small)"], rows


def _rank_table(analysis: StudyAnalysis, primary_only: bool = False) -> Table:
    def ranked(t: Transfer, key: str) -> str:
        if t.rank_intervals:
            return format_interval(getattr(t.rank_intervals, key), signed=key != "decision_accuracy")
        return format_number(getattr(t.rank_agreement, key), digits=2)

    rows = [[t.recipe, t.metric, f"{t.small} to {t.large}", str(t.rank_agreement.n_variants),
             format_number(t.sign_agreement, digits=2), ranked(t, "spearman"), ranked(t, "kendall"),
             ranked(t, "decision_accuracy")]
            for t in _primary_only(analysis, analysis.transfer, primary_only)]
    return ["recipe", "metric", "scales", "variants", "sign agreement", "Spearman", "Kendall",
            "decision accuracy"], rows


def _fit_table(analysis: StudyAnalysis, primary_only: bool = False) -> Table:
    rows = [[f.recipe, f.variant, f.metric, format_interval(f.slope_interval),
             format_number(f.intercept, signed=True, digits=4), format_number(f.r_squared, digits=2),
             format_number(f.lack_of_fit, digits=4), str(f.n_points),
             f"{format_interval(f.prediction)} at {f.target}" if f.prediction else "no target",
             format_interval(f.measurement) if f.measurement else "",
             format_number(f.probability_positive, digits=2)]
            for f in _primary_only(analysis, analysis.fits, primary_only)]
    return ["recipe", "variant", "metric", "slope per decade", "intercept", "R²", "lack of fit", "models",
            "prediction", "from the rungs' noise alone", "P(gain > 0) there"], rows


def _optima_table(analysis: StudyAnalysis, primary_only: bool = False) -> Table:
    target = analysis.target
    headers = (["recipe", "key", "held at", "metric"] + [m.name for m in analysis.models] +
               ["trend with size", f"at {target.name}" if target else "prediction", "keeping the smallest's"])
    rows = []
    for o in analysis.optima:
        rungs = {r.model: r for r in o.rungs}
        held = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in o.fixed.items()) or "-"
        rows.append([o.recipe, o.key, held, o.metric] +
                    [format_setting(rungs[m.name].optimum, rungs[m.name].edge) if m.name in rungs else "-"
                     for m in analysis.models] +
                    [format_trend_of_optimum(o) if o.exponent else "not located",
                     format_setting(o.prediction) if o.prediction else "-",
                     format_interval(o.cost_of_keeping) if o.cost_of_keeping else "-"])
    return headers, rows


def _gap_closed_table(analysis: StudyAnalysis, primary_only: bool = False) -> Table:
    rows = [[g.recipe, g.variant, g.metric, f"{g.small} to {g.large}", f"{g.size_ratio:.1f}x", f"{g.alpha:g}",
             str(g.n_seeds), format_number(g.base), format_number(g.expert), format_number(g.proxy),
             format_number(g.tuned), format_share(g.gap_closed)]
            for g in _primary_only(analysis, analysis.gap_closed, primary_only)]
    return ["recipe", "variant", "metric", "proxy-tuned", "size ratio", "alpha", "seeds", "large base",
            "small tuned (expert)", "large proxy-tuned", "large tuned", "gap closed"], rows


def _base_table(analysis: StudyAnalysis, primary_only: bool = False) -> Table:
    rows = [[b.recipe, b.model, b.metric, str(b.n_evaluations), format_interval(b.base, signed=False)]
            for b in analysis.base]
    return ["recipe", "model", "metric", "distinct evaluations", "base score"], rows


def _judge_table(analysis: StudyAnalysis, primary_only: bool = False) -> Table:
    judge = analysis.judge
    if "cell" in judge and not judge["judges"]:
        cell = judge["cell"]
        return ["judge", "status"], [[f"the {cell['recipe']} cell of {cell['model']} ({cell['variant']}, seed "
                                      f"{cell['seed']}, {cell['config_hash']})", "not trained yet"]]
    weights = judge.get("weights") or [1.0] * len(judge["judges"])
    samples = str(judge.get("num_samples") or "")
    rows = [[j["spec"], f"{w:g}", j["path"] or "(not local)", (j["sha256"] or "")[:16], samples]
            for j, w in zip(judge["judges"], weights)]
    return ["judge", "weight", "from", "sha256 (first 16)", "samples per prompt"], rows


def _completeness_table(analysis: StudyAnalysis, primary_only: bool = False) -> Table:
    rows = [[r.recipe, r.model, f"{r.done} / {r.expected}"] for r in analysis.completeness.by_recipe_model]
    return ["recipe", "model", "cells finished"], rows


def _overoptimization_table(analysis: StudyAnalysis, primary_only: bool = False) -> Table:
    return overoptimization_rows(analysis.overoptimization.curves)


GAP_CLOSED_HEADING = ("Decoding-time proxy-tuning: gap closed = (proxy-tuned - base) / (tuned - base) of the large "
                      "model (Liu et al. 2024 report 88-91%)")

OVEROPTIMIZATION_HEADING = ("Reward-model overoptimization: gold reward against d = sqrt(KL) per proxy reward model "
                            "(Gao et al. 2022)")


SECTIONS = (
    Section("headline", "Headline: is each recipe worth a large run?", _headline_table, verdicts=True,
            per_recipe=_variant_table, console=True),
    Section("optima", "Which setting at the target size: each grid key's optimum per rung and its path with size",
            _optima_table, prose.optimum_lines, detail=True, present=lambda analysis: bool(analysis.optima),
            console=True),
    Section("plots", "Plots", plots=True),
    Section("orderings", "Which variant is best at each scale", _ordering_table, detail=True),
    Section("metric_trust", "Which small-scale metric to trust", _trust_table, detail=True),
    Section("power", "What would resolve the unclear gains", _power_table, detail=True),
    Section("gains", "Gains per variant, model and metric", _gain_table, detail=True, summary=False),
    Section("rank_agreement", "Rank agreement", _rank_table, detail=True),
    Section("transfer_ratios", "Transfer ratios", _ratio_table, detail=True),
    Section("fits", "Gain against scale", _fit_table, detail=True),
    Section("gap_closed", GAP_CLOSED_HEADING, _gap_closed_table, detail=True,
            present=lambda analysis: bool(analysis.gap_closed)),
    Section("overoptimization", OVEROPTIMIZATION_HEADING, _overoptimization_table, prose.overoptimization_lines,
            detail=True, present=lambda analysis: bool(analysis.overoptimization), console=True),
    Section("judge", "Judge of the judged metrics", _judge_table, detail=True,
            present=lambda analysis: bool(analysis.judge)),
    Section("base", "Base scores", _base_table, detail=True, summary=False),
    Section("completeness", "Cells finished", _completeness_table, detail=True, summary=False),
    Section("how_to_read", "How to read this", paragraphs=prose.HOW_TO_READ),
)


def sections(analysis: StudyAnalysis) -> list[Section]:
    """The sections this study has, in the report's order."""
    return [s for s in SECTIONS if s.present(analysis)]
