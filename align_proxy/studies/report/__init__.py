"""A study's report: one self-contained HTML page (plots embedded), a Markdown summary and the JSON of every
number, written for a researcher deciding whether a recipe is worth a large run; and the headline the console
prints.

It draws what `analysis.analyse` computed and adds nothing but the loss curves from the results. The sections
are declared once (`sections.py`); `html.py`, `markdown.py` and `console.py` render them, and `prose.py` words
the verdicts when they render.
"""

from __future__ import annotations

import json
from pathlib import Path

from align_proxy.files import atomic_write
from align_proxy.studies.analysis import StudyAnalysis
from align_proxy.studies.report import prose
from align_proxy.studies.report.html import render_html
from align_proxy.studies.report.markdown import render_markdown
from align_proxy.studies.report.plots import draw_plots
from align_proxy.studies.store import CellResult

__all__ = ["render_html", "render_markdown", "report_json", "write_report"]


def report_json(analysis: StudyAnalysis) -> dict:
    """report.json: every number of the analysis, and each headline entry's confidence and conclusion in words
    (its last two keys)."""
    document = analysis.to_json()
    for entry, words in zip(document["headline"], prose.recipe_verdicts(analysis)):
        entry.update(confidence=words.confidence, conclusion=words.conclusion)
    return document


def write_report(study_dir: Path, analysis: StudyAnalysis, results: list[CellResult], title: str) -> dict[str, Path]:
    """Write report.html, report.md, report.json and plots/*.png into `study_dir`, each atomically."""
    study_dir = Path(study_dir)
    plots = draw_plots(analysis, results)
    written = {f"plot_{name}": atomic_write(study_dir / "plots" / f"{name}.png", png)
               for name, (png, _) in plots.items()}
    written["json"] = atomic_write(study_dir / "report.json",
                                   json.dumps(report_json(analysis), allow_nan=False, indent=1))
    written["markdown"] = atomic_write(study_dir / "report.md", render_markdown(analysis, plots, title))
    written["html"] = atomic_write(study_dir / "report.html", render_html(analysis, plots, title))
    return written
