"""The report's plots (matplotlib, no display): transfer curves, gain against scale with the fit,
small-versus-large rank agreement, which small-scale metric predicts the large model's ordering, and
training loss curves, each returned as PNG bytes."""

from __future__ import annotations

import io
import math
from collections import defaultdict

import numpy as np
from matplotlib.figure import Figure

from align_proxy.studies.analysis import BaseScore, Fit, ModelSize, StudyAnalysis
from align_proxy.studies.report.formatting import format_number, format_parameters
from align_proxy.studies.stats import Interval
from align_proxy.studies.store import CellResult


# --- plots ---------------------------------------------------------------------------------------

def draw_plots(analysis: StudyAnalysis, results: list[CellResult]) -> dict[str, tuple[bytes, str]]:
    """Plot name -> (PNG bytes, caption); a plot with nothing to show is left out."""
    plots, level = {}, f"{analysis.confidence:.0%}"
    for name, draw, caption in (
            ("transfer_curves", _transfer_curves, "Base and trained scores against parameters (log scale), one "
             f"panel per metric; bars are {level} intervals (items resampled jointly, seed spread t-scaled)."),
            ("gain_vs_scale", _gain_vs_scale, "Gain (trained minus base) on each recipe's primary metric against "
             "parameters, with the fit against log(parameters) over the models' mean gains; a star with a bar is "
             "the prediction interval at the target size, a hollow star (no bar) a prediction given as a "
             "direction only (beyond the metric's range, or far past the rungs on a weak fit)."),
            ("optima", _optima, "Which setting at the target size: left, each rung's gain on the recipe's primary "
             "metric against the grid key (log scale), the quadratic fitted near its best value, and its optimum "
             f"(dotted); right, each rung's optimum with its {level} interval (a triangle: at the grid's edge, the "
             "interval open past it), the line through them and the prediction at the target (star)."),
            ("rank_agreement", _rank_scatter, "Each variant's gain at the smallest against the largest scale; "
             "points on one rising line mean the small model orders the variants as the large one does."),
            ("metric_trust", _metric_trust, "Decision accuracy of each metric measured on the smallest model "
             "against the judged metric on the largest (DataDecide's question: which cheap metric picks the "
             f"variant the large model prefers), with {level} intervals; 0.5 is a coin flip."),
            ("gap_closed", _gap_closed, "Decoding-time proxy-tuning: the share of the large model's tuning gain "
             "that steering its base by a smaller model's tuning closes, against the size ratio large / small, on "
             f"each recipe's primary metric, with {level} intervals (none where the tuned gain may be 0); the band is "
             "Liu et al. 2024's 88-91%."),
            ("overoptimization", lambda a, figure: draw_overoptimization(
                a.overoptimization.curves if a.overoptimization else [], figure),
             "Reward-model overoptimization (Gao et al. 2022, Figure 1): gold and proxy reward gain over the starting "
             "policy against d = sqrt(KL to it), one colour per reward-model size; best-of-n circles (d from "
             "log n - (n-1)/n), RL triangles (d measured); dotted: each gold curve's fitted form."),
            ("overoptimization_vs_size", _overoptimization_vs_size, "Gao et al.'s alpha and beta against "
             f"reward-model parameters, per form, with {level} intervals over prompts and the log-linear trend."),
            ("loss_curves", lambda a, figure: _loss_curves(a, results, figure), "Training loss against step per "
             "model: a thick line is the mean over seeds, thin lines are the seeds (log scale when a run "
             "diverged).")):
        figure = Figure(figsize=(12, 3.6), layout="constrained")
        if draw(analysis, figure):
            buffer = io.BytesIO()
            figure.savefig(buffer, format="png", dpi=90, metadata={"Software": None})
            plots[name] = (buffer.getvalue(), caption)
    return plots


def _axes(figure: Figure, n: int, ncols: int = 3) -> list:
    nrows = -(-n // ncols)
    figure.set_size_inches(4 * min(n, ncols) + 0.5, 3.3 * nrows + 0.3)
    return list(figure.subplots(nrows, min(n, ncols), squeeze=False).ravel()[:n])


def _colours(keys: list) -> dict:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {key: cmap(i % 10) for i, key in enumerate(keys)}


def _transfer_curves(analysis: StudyAnalysis, figure: Figure) -> bool:
    metrics = list(analysis.metrics)
    if not metrics:
        return False
    lines = sorted({(g.recipe, g.variant) for g in analysis.gains})
    colours, jitter = _colours(lines), {line: 1 + 0.04 * (i - len(lines) / 2) for i, line in enumerate(lines)}
    for ax, metric in zip(_axes(figure, len(metrics)), metrics):
        _draw_bases(ax, [b for b in analysis.base if b.metric == metric])
        for line in lines:
            rows = sorted((g for g in analysis.gains if (g.recipe, g.variant, g.metric) == (*line, metric)),
                          key=lambda g: g.parameters)
            if rows:
                _errorbar(ax, [g.parameters * jitter[line] for g in rows], [g.trained for g in rows],
                          colour=colours[line], label=f"{line[0]} {line[1]}", marker="o")
        ax.set(xscale="log", xlabel="parameters", title=analysis.metrics[metric].label)
        _model_ticks(ax, analysis.models)
        ax.legend(fontsize=6)
    return True


def _model_ticks(ax, models: list[ModelSize]) -> None:
    """Tick the x axis at the models themselves: the ladder spans one decade, so log ticks would crowd."""
    from matplotlib.ticker import NullFormatter, NullLocator

    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xticks([m.parameters for m in models], [f"{m.name}\n{format_parameters(m.parameters)}" for m in models],
                  fontsize=7)


def _draw_bases(ax, bases: list[BaseScore]) -> None:
    """One dashed base line per distinct base evaluation: recipes sharing a base model's scores share a line."""
    by_values = defaultdict(list)
    for recipe in dict.fromkeys(b.recipe for b in bases):
        rows = sorted((b for b in bases if b.recipe == recipe), key=lambda b: b.parameters)
        by_values[tuple((b.parameters, b.base.estimate) for b in rows)].append((recipe, rows))
    for shade, groups in zip(("black", "dimgray", "gray", "darkgray"), by_values.values()):
        rows = groups[0][1]
        _errorbar(ax, [b.parameters for b in rows], [b.base for b in rows], colour=shade, linestyle="--",
                  label=f"base ({', '.join(r for r, _ in groups)})", marker="s")


def _errorbar(ax, x: list[float], intervals: list[Interval], colour, label: str, **style) -> None:
    y = np.array([iv.estimate for iv in intervals], dtype=float)
    low = np.array([iv.low for iv in intervals], dtype=float)
    high = np.array([iv.high for iv in intervals], dtype=float)
    yerr = np.nan_to_num(np.vstack([y - low, high - y]), nan=0.0).clip(min=0)
    ax.errorbar(x, y, yerr=yerr, color=colour, label=label, capsize=3, **{"markersize": 4, **style})


def _gain_vs_scale(analysis: StudyAnalysis, figure: Figure) -> bool:
    primary = analysis.primary_metrics()
    if not primary:
        return False
    for ax, (recipe, metric) in zip(_axes(figure, len(primary)), primary.items()):
        variants = analysis.recipes[recipe]
        colours = _colours(variants)
        for variant in variants:
            rows = sorted((g for g in analysis.gains if (g.recipe, g.variant, g.metric) ==
                           (recipe, variant, metric)), key=lambda g: g.parameters)
            if rows:
                _errorbar(ax, [g.parameters for g in rows], [g.gain for g in rows], colours[variant],
                          label=variant, marker="o", linestyle="none")
            fit = next((f for f in analysis.fits if (f.recipe, f.variant, f.metric) ==
                        (recipe, variant, metric)), None)
            if fit:
                _draw_fit(ax, fit, colours[variant])
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set(xscale="log", xlabel="parameters", ylabel=f"gain in {metric}", title=recipe)
        ax.legend(fontsize=6)
    return True


def _optima(analysis: StudyAnalysis, figure: Figure) -> bool:
    if not analysis.optima:
        return False
    axes = _axes(figure, 2 * len(analysis.optima), ncols=2)
    for o, (curves, path) in zip(analysis.optima, zip(axes[::2], axes[1::2])):
        colours = _colours([r.model for r in o.rungs])
        unit = {"log10": lambda x: 10 ** x, "logit": lambda x: 1 / (1 + np.exp(-x))}.get(o.scale, lambda x: x)
        fitted_in = {"log10": np.log10, "logit": lambda v: np.log(v / (1 - v))}.get(o.scale, lambda v: v)
        axis = {"log10": "log", "logit": "logit"}.get(o.scale, "linear")
        for rung in o.rungs:
            colour = colours[rung.model]
            curves.plot(rung.values, rung.improvements, "o", color=colour, label=rung.model)
            low, high = fitted_in(np.array([rung.fitted[0], rung.fitted[-1]]))
            x = np.linspace(low, high, 60)
            a, b, c = rung.quadratic
            curves.plot(unit(x), a + b * x + c * x ** 2, color=colour, linewidth=1)
            if not rung.edge:
                curves.axvline(rung.optimum.estimate, color=colour, linestyle=":", linewidth=0.8)
            # A percentile interval need not hold its estimate (a censored one, or a skewed fit): a line and a point,
            # not error bars measured from the point; an open side runs to the grid's edge.
            top = rung.optimum.high if math.isfinite(rung.optimum.high) else rung.values[-1]
            closed = math.isfinite(rung.optimum.low) and (rung.optimum.low > 0 or axis == "linear")
            bottom = rung.optimum.low if closed else rung.values[0]
            path.vlines(rung.parameters, bottom, top, color=colour)
            path.plot([rung.parameters], [rung.optimum.estimate], "o" if not rung.edge else "^" if rung.edge ==
                      "above" else "v", color=colour)
        held = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in o.fixed.items())
        curves.set(xscale=axis, xlabel=o.key,
                   ylabel=f"gain in {o.metric} (larger is better)", title=f"{o.recipe}{' ' + held if held else ''}")
        curves.legend(fontsize=6)
        if o.prediction is not None and o.target_parameters:
            p = o.prediction
            path.vlines(o.target_parameters, p.low, p.high, color="black")
            path.plot([o.target_parameters], [p.estimate], "*", color="black", markersize=10, label=f"{o.target}")
            xs = np.array([o.rungs[0].parameters, o.target_parameters])
            slope, intercept = np.polyfit(np.log10([r.parameters for r in o.rungs]),
                                          fitted_in(np.array([r.optimum.estimate for r in o.rungs])), 1)
            path.plot(xs, unit(intercept + slope * np.log10(xs)), color="grey", linestyle="--", linewidth=1)
            path.legend(fontsize=6)
        path.set(xscale="log", yscale=axis, xlabel="parameters",
                 ylabel=f"best {o.key}", title="optimum" + ("" if o.located else " (not located)"))
    return True


def _gap_closed(analysis: StudyAnalysis, figure: Figure) -> bool:
    primary = analysis.primary_metrics()
    panels = sorted({(g.recipe, g.metric) for g in analysis.gap_closed if primary.get(g.recipe) == g.metric})
    if not panels:
        return False
    for ax, (recipe, metric) in zip(_axes(figure, len(panels)), panels):
        # A share whose large-model gain is zero has no estimate (stats.gap_closed); with no point left, the
        # panel says so rather than asking a log axis to scale nothing.
        rows = [g for g in analysis.gap_closed if (g.recipe, g.metric) == (recipe, metric)
                and math.isfinite(g.gap_closed.estimate)]
        if not rows:
            ax.text(0.5, 0.5, f"gap closed undefined:\nthe large model's tuning gain in {metric} is zero",
                    ha="center", va="center", transform=ax.transAxes, fontsize=8)
            ax.set(title=recipe, xticks=[], yticks=[])
            continue
        series = sorted({(g.variant, g.large, g.alpha) for g in rows})
        colours = _colours(series)
        for variant, large, alpha in series:
            mine = sorted((g for g in rows if (g.variant, g.large, g.alpha) == (variant, large, alpha)),
                          key=lambda g: g.size_ratio)
            _errorbar(ax, [g.size_ratio for g in mine], [g.gap_closed for g in mine], colours[(variant, large, alpha)],
                      label=f"{variant} to {large}, alpha {alpha:g}", marker="o", linestyle="-")
        ax.axhspan(0.881, 0.911, color="grey", alpha=0.25, label="Liu et al. 2024")
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.axhline(1.0, color="black", linewidth=0.8, linestyle=":")
        ax.set(xscale="log", xlabel="size ratio (large / small parameters)", ylabel=f"gap closed in {metric}",
               title=recipe)
        ax.legend(fontsize=6)
    return True


def draw_overoptimization(curves: list, figure: Figure) -> bool:
    """Gold and proxy reward gain against d = sqrt(KL), one colour per reward-model size (best-of-n: circles,
    solid; RL: triangles, dashed), each fitted gold curve dotted: the look of Gao et al.'s Figure 1. `curves`:
    analysis.OveroptimizationCurve (the study report and `align-proxy overoptimization` alike)."""
    from matplotlib import colormaps

    if not curves:
        return False
    figure.set_size_inches(10, 4)
    gold_ax, proxy_ax = figure.subplots(1, 2)
    sizes = sorted({c.parameters for c in curves})
    cmap = colormaps["viridis"]
    for curve in curves:
        colour = cmap(0.85 * sizes.index(curve.parameters) / max(1, len(sizes) - 1))  # viridis' end is pale yellow
        marker, line = ("o", "-") if curve.form == "best_of_n" else ("^", "--")
        seed = f", seed {curve.seed}" if len({c.seed for c in curves}) > 1 else ""
        label = f"{curve.reward_model} RM ({format_parameters(curve.parameters)}), {curve.form_label}{seed}"
        gold_ax.plot(curve.d, curve.gold_gain, marker + line, color=colour, label=label, markersize=4)
        if curve.fit is not None:
            grid = np.linspace(0, max(curve.d), 100)
            gold_ax.plot(grid, curve.fit.curve(grid), ":", color=colour, linewidth=1)
        proxy_ax.plot(curve.d, curve.proxy_gain, marker + line, color=colour, label=label, markersize=4)
    for ax, what in ((gold_ax, "gold"), (proxy_ax, "proxy")):
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set(xlabel="d = sqrt(KL to the initial policy), nats^0.5", ylabel=f"{what} reward gain",
               title=f"{what} reward against optimisation")
        ax.legend(fontsize=6)
    return True


def _overoptimization_vs_size(analysis: StudyAnalysis, figure: Figure) -> bool:
    summary = analysis.overoptimization
    fitted = [c for c in summary.curves if c.fit is not None] if summary else []
    if len({c.parameters for c in fitted}) < 2:
        return False
    axes = _axes(figure, 2, ncols=2)
    forms = sorted({c.form for c in fitted})
    colours = _colours(forms)
    for ax, name in zip(axes, ("alpha", "beta")):
        for form in forms:
            mine = sorted((c for c in fitted if c.form == form), key=lambda c: c.parameters)
            _errorbar(ax, [c.parameters for c in mine], [getattr(c.fit, name) for c in mine], colours[form],
                      label=mine[0].form_label, marker="o", linestyle="none")
            trend = next((t for t in summary.trends if (t.form, t.coefficient) == (form, name)), None)
            if trend is not None:
                x = np.array([min(trend.parameters), max(trend.parameters)], dtype=float)
                ax.plot(x, trend.intercept + trend.slope_per_decade.estimate * np.log10(x), ":", color=colours[form])
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set(xscale="log", xlabel="reward-model parameters", ylabel=name, title=f"{name} against reward-model size")
        _model_ticks(ax, [m for m in analysis.models if m.parameters in {c.parameters for c in fitted}])
        ax.legend(fontsize=7)
    return True


def _draw_fit(ax, fit: Fit, colour) -> None:
    sizes = [p for p, _ in fit.points] + ([fit.target_parameters] if fit.target_parameters else [])
    x = np.geomspace(min(sizes), max(sizes), 50)
    ax.plot(x, fit.intercept + fit.slope * np.log10(x), color=colour, linewidth=1, alpha=0.7)
    if fit.prediction is None or np.isnan(fit.prediction.estimate):
        return
    if fit.prediction_trusted:
        _errorbar(ax, [fit.target_parameters], [fit.prediction], colour, marker="*", markersize=9,
                  label=f"{fit.variant} predicted at {fit.target}", linestyle="none")
    else:
        ax.plot([fit.target_parameters], [fit.prediction.estimate], marker="*", markersize=9,
                markerfacecolor="none", color=colour, linestyle="none",
                label=f"{fit.variant} at {fit.target}: direction only")


def _rank_scatter(analysis: StudyAnalysis, figure: Figure) -> bool:
    entries = [h for h in analysis.headline if h.transfer]
    if not entries:
        return False
    for ax, entry in zip(_axes(figure, len(entries)), entries):
        transfer = entry.transfer
        small, large = entry.scales[0].variants, entry.scales[-1].variants
        shared = [v for v in small if v in large and not np.isnan(small[v].gain.estimate)
                  and not np.isnan(large[v].gain.estimate)]  # a variant that diverged has no gain to place
        if not shared:
            continue
        x = [small[v].gain.estimate for v in shared]
        y = [large[v].gain.estimate for v in shared]
        ax.scatter(x, y, color="tab:blue", zorder=3)
        for v, xi, yi in zip(shared, x, y):
            ax.annotate(v, (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
        lo, hi = min(x + y + [0.0]), max(x + y + [0.0])
        ax.plot([lo, hi], [lo, hi], color="gray", linestyle=":", linewidth=1)
        ax.axhline(0, color="black", linewidth=0.5)
        ax.axvline(0, color="black", linewidth=0.5)
        ranks = transfer.rank_agreement
        ax.set(xlabel=f"gain at {transfer.smallest}", ylabel=f"gain at {transfer.largest}",
               title=f"{entry.recipe} ({entry.metric})\nKendall {format_number(ranks.kendall, digits=2)}, "
                     f"decision accuracy {format_number(ranks.decision_accuracy, digits=2)}")
        ax.title.set_fontsize(9)
    return True


def _recipe_order(analysis: StudyAnalysis):
    order = list(analysis.recipes)
    return lambda recipe: (order.index(recipe) if recipe in order else len(order), recipe)


def _loss_curves(analysis: StudyAnalysis, results: list[CellResult], figure: Figure) -> bool:
    curves = defaultdict(list)  # recipe -> [(model, parameters, variant, steps, losses)]
    for cell in results:
        points = [(h["step"], h["loss"]) for h in cell.log_history if "loss" in h and "step" in h]
        if points:
            curves[cell.recipe].append((cell.parameters, cell.model, cell.variant, *zip(*points)))
    if not curves:
        return False
    for ax, recipe in zip(_axes(figure, len(curves)), sorted(curves, key=_recipe_order(analysis))):
        runs = sorted(curves[recipe], key=lambda r: r[:3])
        models = list(dict.fromkeys(r[1] for r in runs))
        colours = _colours(models)
        styles = dict(zip(dict.fromkeys(r[2] for r in runs), ("-", "--", ":", "-.") * 8))
        for (model, variant), group in _group(runs).items():
            for _, _, _, steps, losses in group:
                ax.plot(steps, losses, color=colours[model], linestyle=styles[variant], linewidth=0.6, alpha=0.3)
            steps, mean = _mean_curve(group)
            ax.plot(steps, mean, color=colours[model], linestyle=styles[variant], linewidth=1.8,
                    label=f"{model} {variant}")
        highest = max(max(losses) for *_, losses in runs)
        lowest = min(min(losses) for *_, losses in runs)
        if lowest > 0 and highest / lowest > 100:  # a diverged run would flatten every other curve
            ax.set_yscale("log")
        ax.set(xlabel="step", ylabel="training loss", title=recipe)
        ax.legend(fontsize=6)
    return True


def _metric_trust(analysis: StudyAnalysis, figure: Figure) -> bool:
    trust = analysis.metric_trust
    if not trust:
        return False
    for ax, entry in zip(_axes(figure, len(trust)), trust):
        candidates = entry.candidates[::-1]
        y = np.arange(len(candidates))
        estimate = np.array([c.decision_accuracy.estimate for c in candidates], dtype=float)
        low = np.array([c.decision_accuracy.low for c in candidates], dtype=float)
        high = np.array([c.decision_accuracy.high for c in candidates], dtype=float)
        xerr = np.nan_to_num(np.vstack([estimate - low, high - estimate]), nan=0.0).clip(min=0)
        ax.errorbar(estimate, y, xerr=xerr, fmt="o", color="tab:blue", capsize=3)
        ax.axvline(0.5, color="gray", linestyle=":", linewidth=1)
        ax.set_yticks(y, [c.metric for c in candidates], fontsize=7)
        ax.set(xlim=(-0.05, 1.05), xlabel=f"decision accuracy vs {entry.judged} at {entry.large}",
               title=f"{entry.recipe}: metrics at {entry.small}")
        ax.title.set_fontsize(9)
    return True


def _group(runs: list[tuple]) -> dict[tuple, list[tuple]]:
    groups = defaultdict(list)
    for run in runs:
        groups[(run[1], run[2])].append(run)
    return groups


def _mean_curve(group: list[tuple]) -> tuple[list, list]:
    by_step = defaultdict(list)
    for *_, steps, losses in group:
        for step, loss in zip(steps, losses):
            by_step[step].append(loss)
    steps = sorted(by_step)
    return steps, [float(np.mean(by_step[s])) for s in steps]


# --- tables: rows of plain text, or (text, css class) for a colour-coded cell --------------------------
