"""Power: what design (seeds, items) would resolve an effect of the observed size at the measured noise."""

from __future__ import annotations

from dataclasses import dataclass

from scipy import special, stats

from align_proxy.studies.record import Record
from align_proxy.studies.stats.resampling import VarianceParts


@dataclass(frozen=True)
class Power(Record):
    """What would resolve an effect of the observed size at the measured noise (95% interval, 80% power).

    `seeds`: seeds needed at the current item count (None: more than `max_seeds`); `items`: items needed at
    the current seed count (None: no item count suffices, the seed spread alone is too large, or more than
    `max_items`); `detectable`: the smallest effect the current design resolves with 80% power;
    `together`: when neither alone suffices, the (seeds, items) design of fewest seed-item evaluations that
    does (None: none within `max_seeds` and `max_items`).
    """

    effect: float
    seeds: int | None
    items: int | None
    detectable: float
    together: tuple[int, int] | None = None


def required_design(parts: VarianceParts, effect: float, confidence: float = 0.95, power: float = 0.8,
                    max_seeds: int = 200, max_items: int = 100_000) -> Power:
    """How many seeds (items fixed) or items (seeds fixed) make an effect of size `effect` resolved with
    probability `power`: |effect| >= (t_crit + z_power) * standard error of that design.

    >>> p = VarianceParts(0.02, 3, 200, item_var=0.02, seed_var=0.00005, residual_var=0.01)
    >>> r = required_design(p, 0.02)
    >>> r.seeds, r.items, round(r.detectable, 3)
    (None, 723, 0.031)
    """
    z_power = float(stats.norm.ppf(power))
    size = abs(effect)

    def needed_se(df: float) -> float:
        # stats.t.ppf is special.stdtrit behind ~50 us of argument checks; this search calls it thousands of times.
        return size / (float(special.stdtrit(max(df, 1.0), 0.5 + confidence / 2)) + z_power)

    def df_at(s: int, n: int) -> float:
        scaled = VarianceParts(parts.mean, s, n, parts.item_var - parts.residual_var / parts.n_seeds +
                               parts.residual_var / s, parts.seed_var, parts.residual_var)
        return scaled.degrees_of_freedom()

    def enough(s: int, n: int) -> bool:
        return size > 0 and parts.standard_error_at(s, n) <= needed_se(df_at(s, n))

    def fewest_items(s: int) -> int | None:
        n = parts.n_items
        while n <= max_items:
            if enough(s, n):
                return n
            n = max(n + 1, int(n * 1.05))
        return None

    seeds = next((s for s in range(2, max_seeds + 1) if enough(s, parts.n_items)), None)
    items = fewest_items(parts.n_seeds) if parts.n_items > 1 else None
    together = None
    if seeds is None and items is None and parts.n_items > 1 and size > 0:
        designs = [(s, n) for s in range(parts.n_seeds + 1, min(max_seeds, 50) + 1) if (n := fewest_items(s))]
        together = min(designs, key=lambda d: (d[0] * d[1], d[0]), default=None)
    df = parts.degrees_of_freedom()
    t_crit = float(stats.t.ppf(0.5 + confidence / 2, max(df, 1.0)))
    return Power(float(effect), seeds, items, (t_crit + z_power) * parts.standard_error, together)

