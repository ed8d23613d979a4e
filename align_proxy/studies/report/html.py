"""The report as one self-contained HTML page (plots embedded as PNG data), drawn section by section from
`sections.SECTIONS`: every table in full, verdicts coloured."""

from __future__ import annotations

import base64
import html

from align_proxy.studies.analysis import StudyAnalysis
from align_proxy.studies.report import prose
from align_proxy.studies.report.formatting import recipe_label
from align_proxy.studies.report.sections import Section, sections

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

# The headline table keeps its anchor: report.html#headline is how a reader is pointed at the answer.
ANCHORED = {"headline"}


def _html_table(headers: list[str], rows: list[list], table_id: str | None = None) -> str:
    def cell(value) -> str:
        text, css = value if isinstance(value, tuple) else (value, None)
        attribute = f' class="{html.escape(css)}"' if css else ""
        return f"<td{attribute}>{html.escape(str(text)).replace(chr(10), '<br>')}</td>"

    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows)
    ident = f' id="{html.escape(table_id)}"' if table_id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _section(section: Section, analysis: StudyAnalysis, plots: dict[str, tuple[bytes, str]]) -> list[str]:
    esc = html.escape
    parts = [f"<h2>{esc(section.title)}</h2>"]
    if section.table:
        parts.append(_html_table(*section.table(analysis, False), section.id if section.id in ANCHORED else None))
    if section.verdicts:
        parts.append("<ul>" + "".join(f'<li><b>{esc(v.label)}</b> (<span class="{esc(v.confidence)}">'
                                      f'{esc(v.confidence)} confidence</span>): {esc(v.conclusion)}</li>'
                                      for v in prose.recipe_verdicts(analysis)) + "</ul>")
    if section.per_recipe:
        for entry in analysis.headline:
            parts += [f"<h3>{esc(recipe_label(entry))}: every variant on {esc(entry.metric_label)}</h3>",
                      _html_table(*section.per_recipe(analysis, entry))]
    if section.plots:
        for name, (png, caption) in plots.items():
            data = base64.b64encode(png).decode("ascii")
            parts.append(f'<figure><img src="data:image/png;base64,{data}" alt="{esc(name.replace("_", " "))}: '
                         f'{esc(caption)}"><figcaption>{esc(caption)}</figcaption></figure>')
    if section.lines:
        parts.append("<ul>" + "".join(f"<li>{esc(line)}</li>" for line in section.lines(analysis)) + "</ul>")
    parts += [f"<p>{esc(p)}</p>" for p in section.paragraphs or ()]
    return parts


def render_html(analysis: StudyAnalysis, plots: dict[str, tuple[bytes, str]], title: str) -> str:
    """The page: the study in brief, a partial study's warning, then every section this study has."""
    esc = html.escape
    parts = [f"<h1>{esc(title)}</h1>", *(f"<p>{esc(line)}</p>" for line in prose.summary_lines(analysis)),
             *(f'<p class="warning">{esc(line)}</p>' for line in prose.partial_lines(analysis))]
    for section in sections(analysis):
        parts += _section(section, analysis, plots)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f"<style>{CSS}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")
