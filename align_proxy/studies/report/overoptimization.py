"""The report of `align-proxy overoptimization`: curves measured outside a study (best-of-n pools and RL runs),
fitted, their trends against reward-model size, printed and written as overoptimization.json and .png."""

from __future__ import annotations

import io
import json
from pathlib import Path

from matplotlib.figure import Figure
from rich.console import Console

from align_proxy.files import atomic_write
from align_proxy.studies.overoptimization import Curve, size_trends
from align_proxy.studies.analysis import OveroptimizationCurve, to_json
from align_proxy.studies.report.console import overoptimization_table
from align_proxy.studies.report.formatting import format_trend
from align_proxy.studies.report.plots import draw_overoptimization


def write_curves(console: Console, curves: list[Curve], document: dict, out: Path) -> dict[str, Path]:
    """Print the curves' table and size trends, and write `document` (what was measured) with the curves and
    trends into `out`/overoptimization.json, and their plot into `out`/overoptimization.png."""
    records = [OveroptimizationCurve.of(c) for c in curves]
    console.print(overoptimization_table(records))
    trends = size_trends(curves)
    for trend in trends:
        console.print(format_trend(trend))
    document = {**document, "curves": [c.to_json() for c in records], "trend": [to_json(t) for t in trends]}
    written = {"json": atomic_write(out / "overoptimization.json", json.dumps(document, indent=1, allow_nan=False)),
               "png": atomic_write(out / "overoptimization.png", _plot(records))}
    console.print(f"written: {out / 'overoptimization.json'}, {out / 'overoptimization.png'}")
    return written


def _plot(curves: list[OveroptimizationCurve]) -> bytes:
    """The curves drawn as the study report draws them (`plots.draw_overoptimization`), as PNG bytes."""
    figure = Figure(figsize=(10, 4), layout="constrained")
    draw_overoptimization(curves, figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, metadata={"Software": None})
    return buffer.getvalue()
