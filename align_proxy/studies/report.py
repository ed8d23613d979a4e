"""A study's report: one self-contained HTML page (plots embedded), a Markdown summary and the JSON of
every number, written for a researcher deciding whether a recipe is worth a large run.

It draws what `analysis.analyse` computed and adds nothing but the loss curves from the results.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from align_proxy.files import atomic_write
from align_proxy.studies.formatting import (format_interval, format_number, format_parameters, format_share,
                                            format_trend, overoptimization_rows, peak_shift_text, recipe_label)
from align_proxy.studies.plots import draw_plots
from align_proxy.studies.analysis import (
    Headline,
    Prediction,
    Scale,
    StudyAnalysis,
    Transfer,
    TransferSummary,
)
from align_proxy.studies.stats import Power
from align_proxy.studies.store import CellResult

GAP_CLOSED_HEADING = ("Decoding-time proxy-tuning: gap closed = (proxy-tuned - base) / (tuned - base) of the large "
                      "model (Liu et al. 2024 report 88-91%)")

OVEROPTIMIZATION_HEADING = ("Reward-model overoptimization: gold reward against d = sqrt(KL) per proxy reward model "
                            "(Gao et al. 2022)")


def _overoptimization_table(analysis: StudyAnalysis) -> tuple[list[str], list[list]]:
    return overoptimization_rows(analysis.overoptimization.curves)


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


CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .9em; }
th, td { border: 1px solid #bbb; padding: .3em .55em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.helps { background: #d8f0d8; } .hurts { background: #f6d5d5; } .unclear { background: #f3f0d9; }
.diverges { background: #e8c8f0; }
td.helps, td.hurts, td.unclear, td.diverges { white-space: nowrap; }
.high { font-weight: bold; color: #1a6b1a; } .medium { color: #7a5a00; } .low { color: #a02020; }
.warning { background: #fff4d6; border: 1px solid #e0c060; padding: .6em 1em; }
figure { margin: 1.2em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: .9em; color: #555; } small { color: #555; }
"""


def write_report(study_dir: Path, analysis: StudyAnalysis, results: list[CellResult], title: str) -> dict[str, Path]:
    """Write report.html, report.md, report.json and plots/*.png into `study_dir`, each atomically."""
    study_dir = Path(study_dir)
    plots = draw_plots(analysis, results)
    written = {f"plot_{name}": atomic_write(study_dir / "plots" / f"{name}.png", png) for name, (png, _) in plots.items()}
    written["json"] = atomic_write(study_dir / "report.json",
                                   json.dumps(analysis.to_json(), allow_nan=False, indent=1))
    written["markdown"] = atomic_write(study_dir / "report.md", render_markdown(analysis, plots, title))
    written["html"] = atomic_write(study_dir / "report.html", render_html(analysis, plots, title))
    return written


# --- formatting ---------------------------------------------------------------------------------

def _verdict_cell(scale: Scale | None, variant: str | None = None) -> tuple[str, str] | str:
    if scale is None:
        return "no results"
    lines = [scale.verdict, format_interval(scale.gain)] + ([variant] if variant else [])
    return "\n".join(lines), scale.verdict


def _headline_table(analysis: StudyAnalysis) -> tuple[list[str], list[list]]:
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
                     _prediction_text(h.prediction), (h.confidence, h.confidence)])
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


def _variant_table(analysis: StudyAnalysis, entry: Headline) -> tuple[list[str], list[list]]:
    def cell(scale: Scale, variant: str):
        row = scale.variants.get(variant)
        if row is None:
            return "no results"
        best = f"\nP(best) {row.p_best:.2f}" if row.p_best is not None and len(scale.variants) > 1 else ""
        return f"{row.verdict}\n{format_interval(row.gain)}{best}", row.verdict

    rows = [[variant] + [cell(s, variant) for s in entry.scales] for variant in analysis.recipes[entry.recipe]]
    return ["variant"] + [s.model for s in entry.scales], rows


def _ordering_table(analysis: StudyAnalysis) -> tuple[list[str], list[list]]:
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


def _power_table(analysis: StudyAnalysis) -> tuple[list[str], list[list]]:
    rows = [[g.recipe, g.variant, g.model, g.metric, format_interval(g.gain), format_number(g.variance.standard_error),
             format_number(g.power.detectable), str(g.power.seeds or "-"), str(g.power.items or "-")]
            for g in analysis.gains if g.power]
    return ["recipe", "variant", "model", "metric", "gain", "standard error", "resolvable now",
            "seeds needed (at the current items)", "items needed (at the current seeds)"], rows


def _trust_table(analysis: StudyAnalysis) -> tuple[list[str], list[list]]:
    rows = [[t.recipe, f"{t.judged} at {t.large}", f"{c.metric} at {t.small}", str(c.n_variants),
             format_interval(c.decision_accuracy, signed=False)]
            for t in analysis.metric_trust for c in t.candidates]
    return ["recipe", "judged on", "small-scale metric", "variants", "decision accuracy"], rows


def _gain_table(analysis: StudyAnalysis) -> tuple[list[str], list[list]]:
    rows = [[g.recipe, g.variant, g.model, g.metric, str(g.n_seeds), str(g.n_items or "aggregate"),
             format_number(g.base_mean), format_interval(g.trained, signed=False),
             (format_interval(g.gain), g.verdict), g.verdict] for g in analysis.gains]
    return ["recipe", "variant", "model", "metric", "seeds", "items", "base", "trained", "gain", "verdict"], rows


def _primary_only(analysis: StudyAnalysis, records: list, primary_only: bool) -> list:
    primary = analysis.primary_metrics()
    return [r for r in records if not primary_only or primary.get(r.recipe) == r.metric]


def _ratio_table(analysis: StudyAnalysis, primary_only: bool = False) -> tuple[list[str], list[list]]:
    rows = [[t.recipe, t.metric, f"{t.small} to {t.large}", v, format_interval(iv, signed=False)]
            for t in _primary_only(analysis, analysis.transfer, primary_only) for v, iv in t.ratios.items()]
    return ["recipe", "metric", "scales", "variant", "gain ratio (large / small)"], rows


def _rank_table(analysis: StudyAnalysis, primary_only: bool = False) -> tuple[list[str], list[list]]:
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


def _fit_table(analysis: StudyAnalysis, primary_only: bool = False) -> tuple[list[str], list[list]]:
    rows = [[f.recipe, f.variant, f.metric, format_interval(f.slope_interval),
             format_number(f.intercept, signed=True, digits=4), format_number(f.r_squared, digits=2),
             format_number(f.lack_of_fit, digits=4), str(f.n_points),
             f"{format_interval(f.prediction)} at {f.target}" if f.prediction else "no target",
             format_interval(f.measurement) if f.measurement else "",
             format_number(f.probability_positive, digits=2)]
            for f in _primary_only(analysis, analysis.fits, primary_only)]
    return ["recipe", "variant", "metric", "slope per decade", "intercept", "R²", "lack of fit", "models",
            "prediction", "from the rungs' noise alone", "P(gain > 0) there"], rows


def _gap_closed_table(analysis: StudyAnalysis, primary_only: bool = False) -> tuple[list[str], list[list]]:
    rows = [[g.recipe, g.variant, g.metric, f"{g.small} to {g.large}", f"{g.size_ratio:.1f}x", f"{g.alpha:g}",
             str(g.n_seeds), format_number(g.base), format_number(g.expert), format_number(g.proxy),
             format_number(g.tuned), format_share(g.gap_closed)]
            for g in _primary_only(analysis, analysis.gap_closed, primary_only)]
    return ["recipe", "variant", "metric", "proxy-tuned", "size ratio", "alpha", "seeds", "large base",
            "small tuned (expert)", "large proxy-tuned", "large tuned", "gap closed"], rows


def _base_table(analysis: StudyAnalysis) -> tuple[list[str], list[list]]:
    rows = [[b.recipe, b.model, b.metric, str(b.n_evaluations), format_interval(b.base, signed=False)]
            for b in analysis.base]
    return ["recipe", "model", "metric", "distinct evaluations", "base score"], rows


def _completeness_table(analysis: StudyAnalysis) -> tuple[list[str], list[list]]:
    rows = [[r.recipe, r.model, f"{r.done} / {r.expected}"] for r in analysis.completeness.by_recipe_model]
    return ["recipe", "model", "cells finished"], rows


def _summary_lines(analysis: StudyAnalysis) -> list[str]:
    done = analysis.completeness
    target = analysis.target
    models = ", ".join(f"{m.name} ({format_parameters(m.parameters)})" for m in analysis.models)
    return [f"Models: {models}.",
            f"Cells finished: {done.done} of {done.expected} ({done.expected_from}); seeds: "
            f"{', '.join(map(str, analysis.seeds)) or 'none'}.",
            f"Intervals: {analysis.confidence:.0%}, {analysis.n_resamples} crossed resamples (items shared, "
            f"seeds t-scaled). Target size: "
            + (f"{target.name} ({format_parameters(target.parameters)})." if target else "none named.")]


def _partial_lines(analysis: StudyAnalysis, limit: int = 12) -> list[str]:
    done = analysis.completeness
    if done.complete:
        return []
    if not done.expected:
        return ["No finished cells yet: there is nothing to analyse."]
    missing = [f"{m.recipe} {m.variant} on {m.model} seed {m.seed} ({m.status})" for m in done.missing]
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


def _html_table(headers: list[str], rows: list[list], table_id: str | None = None) -> str:
    def cell(value) -> str:
        text, css = value if isinstance(value, tuple) else (value, None)
        attribute = f' class="{html.escape(css)}"' if css else ""
        return f"<td{attribute}>{html.escape(str(text)).replace(chr(10), '<br>')}</td>"

    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows)
    ident = f' id="{html.escape(table_id)}"' if table_id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _md_table(headers: list[str], rows: list[list]) -> str:
    def cell(value) -> str:
        text = value[0] if isinstance(value, tuple) else value
        return str(text).replace("|", "\\|").replace("\n", " ")

    if not rows:
        return "_none yet_"
    lines = ["| " + " | ".join(map(cell, headers)) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(map(cell, row)) + " |" for row in rows])


def render_html(analysis: StudyAnalysis, plots: dict[str, tuple[bytes, str]], title: str) -> str:
    esc = html.escape
    parts = [f"<h1>{esc(title)}</h1>", *(f"<p>{esc(line)}</p>" for line in _summary_lines(analysis)),
             *(f'<p class="warning">{esc(line)}</p>' for line in _partial_lines(analysis)),
             "<h2>Headline: is each recipe worth a large run?</h2>",
             _html_table(*_headline_table(analysis), "headline"),
             "<ul>" + "".join(f'<li><b>{esc(recipe_label(h))}</b> (<span class="{esc(h.confidence)}">'
                              f'{esc(h.confidence)} confidence</span>): {esc(h.conclusion)}</li>'
                              for h in analysis.headline) + "</ul>"]
    for entry in analysis.headline:
        parts += [f"<h3>{esc(recipe_label(entry))}: every variant on {esc(entry.metric_label)}</h3>",
                  _html_table(*_variant_table(analysis, entry))]
    parts.append("<h2>Plots</h2>")
    for name, (png, caption) in plots.items():
        data = base64.b64encode(png).decode("ascii")
        parts.append(f'<figure><img src="data:image/png;base64,{data}" alt="{esc(name.replace("_", " "))}: '
                     f'{esc(caption)}"><figcaption>{esc(caption)}</figcaption></figure>')
    for heading, table in (("Which variant is best at each scale", _ordering_table),
                           ("Which small-scale metric to trust", _trust_table),
                           ("What would resolve the unclear gains", _power_table),
                           ("Gains per variant, model and metric", _gain_table), ("Transfer ratios", _ratio_table),
                           ("Rank agreement across scales", _rank_table), ("Gain against scale fits", _fit_table),
                           *((GAP_CLOSED_HEADING, _gap_closed_table),) * bool(analysis.gap_closed),
                           *((OVEROPTIMIZATION_HEADING, _overoptimization_table),) * bool(analysis.overoptimization),
                           ("Base scores", _base_table), ("Cells finished", _completeness_table)):
        parts += [f"<h2>{esc(heading)}</h2>", _html_table(*table(analysis))]
        if heading == OVEROPTIMIZATION_HEADING:
            lines = overoptimization_lines(analysis)
            parts.append("<ul>" + "".join(f"<li>{esc(line)}</li>" for line in lines) + "</ul>")
    parts += ["<h2>How to read this</h2>", *(f"<p>{esc(p)}</p>" for p in HOW_TO_READ)]
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f"<style>{CSS}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")


def render_markdown(analysis: StudyAnalysis, plots: dict[str, tuple[bytes, str]], title: str) -> str:
    parts = [f"# {title}", "\n".join(_summary_lines(analysis)),
             *(f"> **{line}**" for line in _partial_lines(analysis)),
             "## Headline: is each recipe worth a large run?", _md_table(*_headline_table(analysis)),
             "\n".join(f"- **{recipe_label(h)}** ({h.confidence} confidence): {h.conclusion}"
                       for h in analysis.headline)]
    for entry in analysis.headline:
        parts += [f"### {recipe_label(entry)}: every variant on {entry.metric_label}",
                  _md_table(*_variant_table(analysis, entry))]
    parts += ["## Plots", *(f"![{name.replace('_', ' ')}](plots/{name}.png)\n\n{caption}"
                            for name, (_, caption) in plots.items())]
    parts += ["## Key numbers (primary metrics)", "### Which variant is best at each scale",
              _md_table(*_ordering_table(analysis)), "### Which small-scale metric to trust",
              _md_table(*_trust_table(analysis)), "### What would resolve the unclear gains",
              _md_table(*_power_table(analysis)), "### Rank agreement", _md_table(*_rank_table(analysis, True)),
              "### Transfer ratios", _md_table(*_ratio_table(analysis, True)),
              "### Gain against scale", _md_table(*_fit_table(analysis, True)),
              *([f"### {GAP_CLOSED_HEADING}", _md_table(*_gap_closed_table(analysis, True))] if analysis.gap_closed
                else []),
              *([f"### {OVEROPTIMIZATION_HEADING}", _md_table(*_overoptimization_table(analysis)),
                 "\n".join(f"- {line}" for line in overoptimization_lines(analysis))] if analysis.overoptimization
                else []),
              "Every number, all metrics: `report.json`; the full tables: `report.html`.",
              "## How to read this", *HOW_TO_READ]
    return "\n\n".join(parts) + "\n"
