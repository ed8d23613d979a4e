"""How the study report, its plots and the CLI write numbers, so all three read the same."""

from __future__ import annotations

import math

from align_proxy.studies.records import Headline
from align_proxy.studies.stats import Interval


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


def recipe_label(entry: Headline) -> str:
    """A headline's recipe, with what its cells started from (`start_from`): `grpo (from sft)`."""
    start = entry.starts_from
    return f"{entry.recipe} (from {start.recipe})" if start else entry.recipe


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
