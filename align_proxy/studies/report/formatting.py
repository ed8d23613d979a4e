"""How the study report, its plots and the console write numbers, so all three read the same; and the one
overoptimization table (`overoptimization_rows`) the report and `align-proxy overoptimization` both show."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from align_proxy.studies.stats import Interval

if TYPE_CHECKING:  # verdicts' prose formats with this module, and the analysis calls that prose
    from align_proxy.studies.analysis import Headline


def format_number(x, signed: bool = False, digits: int = 3) -> str:
    if x is None or math.isnan(x):
        return "n/a"
    x = 0.0 if abs(x) < 0.5 * 10 ** -digits else x  # no "-0.000" for a gain that rounds to zero
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def format_parameters(n: float | None) -> str:
    """Parameter counts as the README writes them: 0.20M, 1.79M, 62.6M, 345.3M, 1.50B."""
    if n is None:
        return "n/a"
    scale, unit = (1e9, "B") if n >= 1e9 else (1e6, "M") if n >= 1e4 else (1, "")
    return f"{n / scale:.{0 if unit == '' else 2 if n < 10 * scale else 1}f}{unit}"


def format_interval(iv: Interval | None, signed: bool = True) -> str:
    """`+0.103 [+0.050, +0.158]`, or just the estimate when it has no bounds, or n/a when it has neither."""
    if iv is None or math.isnan(iv.estimate):
        return "n/a"
    bounds = "" if math.isnan(iv.low) else f" [{format_number(iv.low, signed)}, {format_number(iv.high, signed)}]"
    return f"{format_number(iv.estimate, signed)}{bounds}"


def format_setting(iv: Interval | None, edge: str | None = None) -> str:
    """A hyperparameter's optimum: `2.1e-05 [9e-06, 4.8e-05]`, `>= 0.0316 [0.0143, open)` when it is at or past the
    grid's upper edge (an open side is infinite), n/a without one.

    >>> format_setting(Interval(2.1e-5, 9e-6, 4.8e-5)), format_setting(Interval(0.0316, 0.0143, math.inf), "above")
    ('2.1e-05 [9e-06, 4.8e-05]', '>= 0.0316 [0.0143, open)')
    """
    if iv is None or not math.isfinite(iv.estimate):
        return "n/a"
    prefix = {"above": ">= ", "below": "<= "}.get(edge, "")
    low = "(open" if iv.low in (0.0, -math.inf) else f"[{iv.low:.3g}"
    high = "open)" if iv.high == math.inf else f"{iv.high:.3g}]"
    return f"{prefix}{iv.estimate:.3g} {low}, {high}"


def format_trend_of_optimum(optimum) -> str:
    """How an optimum moves with size (`analysis.Optimum.exponent`): `optimum ~ N^-0.99 [-2.21, +0.63]` for a key
    fitted in log10, else its change per decade of parameters in the scale it was fitted in."""
    e = optimum.exponent
    bounds = f"[{format_number(e.low, True, 2)}, {format_number(e.high, True, 2)}]"
    if optimum.scale == "log10":
        return f"optimum ~ N^{format_number(e.estimate, True, 2)} {bounds}"
    what = "logit(optimum)" if optimum.scale == "logit" else "optimum"
    return f"{what} {format_number(e.estimate, True, 2)} {bounds} per decade of parameters"


def recipe_label(entry: Headline) -> str:
    """A headline's recipe, with what its cells started from (`start_from`): `grpo (from sft)`, or
    `rloo (from sft on ladder-s, against reward)` for a fixed policy trained against each size's reward model."""
    start = entry.starts_from
    if not start:
        return entry.recipe
    model = f" on {start.model}" if start.model else ""
    reward = f", against {start.reward_from}" if start.reward_from else ""
    return f"{entry.recipe} (from {start.recipe}{model}{reward})"


def format_share(iv: Interval | None) -> str:
    """A share as percentages: `88% [71%, 104%]`; the estimate alone when its interval is undefined (the gap
    it is a share of may be zero), n/a without an estimate.

    >>> format_share(Interval(0.881, 0.705, 1.04)), format_share(Interval(-0.5, math.nan, math.nan))
    ('88% [70%, 104%]', '-50% (no interval: the tuned gain may be 0)')
    """
    if iv is None or not math.isfinite(iv.estimate):
        return "n/a"
    if math.isnan(iv.low):
        return f"{iv.estimate:.0%} (no interval: the tuned gain may be 0)"
    return f"{iv.estimate:.0%} [{iv.low:.0%}, {iv.high:.0%}]"


def format_trend(trend) -> str:
    """A reward-model size trend (`overoptimization.SizeTrend`) in words: `best-of-n beta per decade of reward-model
    parameters: -0.006 [-0.11, +0.10] (R^2 0.22, 3 sizes)`."""
    from align_proxy.studies.overoptimization import form_label

    return (f"{form_label(trend.form)} {trend.coefficient} per decade of reward-model parameters: "
            f"{format_interval(trend.slope_per_decade)} (R^2 {trend.r_squared:.2f}, {len(trend.parameters)} sizes)")


OVEROPTIMIZATION_COLUMNS = ("form", "reward model", "seed", "points", "proxy gain", "gold start -> end", "alpha",
                            "beta", "peak d*", "gold gain at d*", "KL at end (best-of-n: formula / pool / policy)")


def overoptimization_rows(curves: list) -> tuple[list[str], list[list[str]]]:
    """The table of overoptimization curves (`analysis.OveroptimizationCurve`), for the report and the CLI alike:
    what each reaches, and Gao et al.'s fit with its peak. Best-of-n's KL at the largest n three ways: the formula
    (its d), the pool's sample frequencies (repeats merged) and the policy's own probabilities on the pool's
    completions; RL's is the run's measured KL."""
    from pathlib import Path

    rows = []
    for curve in curves:
        fit = curve.fit
        points = f"n = {curve.points[0]}..{curve.points[-1]}" if curve.form == "best_of_n" else \
            f"steps 0..{curve.points[-1]}"
        kl = [f"{curve.d[-1] ** 2:.2f}", *(f"{values[-1]:.2f}" if values is not None else "-"
                                           for values in (curve.kl_measured, curve.kl_policy))]
        kl = " / ".join(kl) if curve.form == "best_of_n" else f"{kl[0]} (measured)"
        rows.append([curve.form_label, f"{Path(curve.reward_model).name} ({format_parameters(curve.parameters)})",
                     str(curve.seed), points, format_number(curve.proxy_gain[-1], True),
                     f"{format_number(curve.gold[0])} -> {format_number(curve.gold[-1])}",
                     *((format_interval(fit.alpha), format_interval(fit.beta), format_peak(fit.peak_d, fit.d_max),
                        format_interval(fit.peak_reward)) if fit else ["-"] * 4),
                     kl])
    return list(OVEROPTIMIZATION_COLUMNS), rows


def format_peak(iv: Interval, d_max: float | None = None) -> str:
    """A peak d* with its interval; an upper bound past the last d measured (some resamples still rise there, so
    the data do not bound it) reads `>d_max`, or `past the data` without it.

    >>> format_peak(Interval(0.0, 0.0, math.inf), 2.512), format_peak(Interval(0.0, 0.0, math.inf))
    ('0.000 [0.000, >2.51]', '0.000 [0.000, past the data]')
    >>> format_peak(Interval(0.378, 0.087, 0.54), 1.78)
    '0.378 [0.087, 0.540]'
    """
    if math.isinf(iv.high) and math.isfinite(iv.estimate):
        return f"{format_number(iv.estimate)} [{format_number(iv.low)}, " + \
            (f">{d_max:.2f}]" if d_max is not None else "past the data]")
    return format_interval(iv, False)


def peak_shift_text(shift) -> str:
    """Whether a smaller reward model overoptimises sooner, in words (`analysis.PeakShift`), and what would tell."""
    from align_proxy.studies.overoptimization import form_label

    what = (f"{form_label(shift.form)} ({shift.recipe}, {shift.variant}, seed {shift.seed}): peak d* "
            f"{format_peak(shift.small_peak)} at {shift.small}, {format_peak(shift.large_peak)} "
            f"at {shift.large}; {shift.large} - {shift.small}: {format_interval(shift.difference)}")
    if shift.small_peak.estimate == 0 and shift.large_peak.estimate == 0:
        return f"{what}: the gold reward falls from the start with both, so there is no peak to move"
    if math.isnan(shift.difference.estimate) or math.isnan(shift.difference.low):
        return f"{what}: no answer (a fit still rising at the last point measured: optimise further to find its peak)"
    if shift.resolved:
        later = shift.difference.estimate > 0
        return (f"{what}: the {'larger' if later else 'smaller'} reward model bears more optimisation before gold "
                f"reward falls ({'as Gao et al. found' if later else 'the opposite of Gao et al.'})")
    if math.isinf(shift.difference.low) or math.isinf(shift.difference.high):
        return (f"{what}: not resolved, the interval covers 0 and is open on one side: in some resamples a curve still "
                "rises at the last point measured, its peak past the data; optimise further to bound it")
    need = (f"; about {shift.prompts_to_resolve:,} prompts (now {shift.prompts}) would resolve a shift this size"
            if shift.prompts_to_resolve else "")
    return f"{what}: not resolved, the interval covers 0{need}"
