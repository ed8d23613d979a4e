"""The JSON form every typed study record shares: report.json's, and overoptimization.json's.

A record is a frozen dataclass, so a misspelt or renamed field fails where it is read (and in a type checker),
not while a report renders. `to_json` gives field names as keys and undefined numbers (nan, inf) as null, so
`json.dumps(record.to_json(), allow_nan=False)` works; intervals (`stats.Interval`) and designs (`stats.Power`)
inside a record serialise as their fields.
"""

from __future__ import annotations

import math
from dataclasses import fields, is_dataclass

import numpy as np


def to_json(value):
    """Records, intervals, dicts, lists and numpy scalars as JSON-ready Python (nan and inf become None).

    >>> from align_proxy.studies.stats import Interval
    >>> to_json({"a": Interval(0.5, float("nan"), 1.0), "b": (np.float64(2.0), np.int64(3))})
    {'a': {'estimate': 0.5, 'low': None, 'high': 1.0}, 'b': [2.0, 3]}
    """
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return to_json(value.tolist())
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


class Record:
    """What every study record shares: its JSON form."""

    def to_json(self) -> dict:
        return to_json(self)
