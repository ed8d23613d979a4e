"""Power: what design (seeds, items) would resolve an effect of the observed size at the measured noise."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special, stats

from align_proxy.studies.record import Record
from align_proxy.studies.stats.resampling import VarianceParts, welch_degrees_of_freedom


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
    # The candidate item counts: the current one, then 5% steps (at least one item) up to max_items.
    grid, n = [], parts.n_items
    while n <= max_items:
        grid.append(n)
        n = max(n + 1, int(n * 1.05))
    grid = np.array(grid, dtype=float)

    def enough(s: np.ndarray, n: np.ndarray) -> np.ndarray:
        """Whether a design of s seeds x n items resolves the effect, for broadcast arrays of designs: its standard
        error at most size / (t_crit(df) + z_power), with df its Welch-Satterthwaite degrees of freedom."""
        s, n = np.asarray(s, float), np.asarray(n, float)
        df = welch_degrees_of_freedom(parts.item_var_at(s) / n, n - 1, parts.seed_var / s, s - 1)
        # special.stdtrit is stats.t.ppf without its argument checks, on the whole array at once.
        needed = size / (special.stdtrit(np.maximum(df, 1.0), 0.5 + confidence / 2) + z_power)
        return (size > 0) & (parts.standard_error_at(s, n) <= needed)

    def first(found: np.ndarray, values: np.ndarray) -> int | None:
        return int(values[found.argmax()]) if found.any() else None

    seed_counts = np.arange(2, max_seeds + 1, dtype=float)
    seeds = first(enough(seed_counts, float(parts.n_items)), seed_counts)
    items = first(enough(float(parts.n_seeds), grid), grid) if parts.n_items > 1 else None
    together = None
    if seeds is None and items is None and parts.n_items > 1 and size > 0:
        # Every design of more seeds (up to 50) at its fewest items; the one of fewest seed-item evaluations.
        more = np.arange(parts.n_seeds + 1, min(max_seeds, 50) + 1, dtype=float)
        found = enough(more[:, None], grid[None, :])
        designs = [(int(s), int(grid[row.argmax()])) for s, row in zip(more, found) if row.any()]
        together = min(designs, key=lambda d: (d[0] * d[1], d[0]), default=None)
    df = parts.degrees_of_freedom()
    t_crit = float(stats.t.ppf(0.5 + confidence / 2, max(df, 1.0)))
    return Power(float(effect), seeds, items, (t_crit + z_power) * parts.standard_error, together)
