"""The report's Markdown summary, drawn from `sections.SECTIONS`: the headline, the plots as links, and the key
tables on each recipe's primary metric (report.html has them all, report.json every number)."""

from __future__ import annotations

from align_proxy.studies.analysis import StudyAnalysis
from align_proxy.studies.report import prose
from align_proxy.studies.report.formatting import recipe_label
from align_proxy.studies.report.sections import Section, sections

KEY_NUMBERS = "## Key numbers (primary metrics)"
EVERY_NUMBER = "Every number, all metrics: `report.json`; the full tables: `report.html`."


def _md_table(headers: list[str], rows: list[list]) -> str:
    def cell(value) -> str:
        text = value[0] if isinstance(value, tuple) else value
        return str(text).replace("|", "\\|").replace("\n", " ")

    if not rows:
        return "_none yet_"
    lines = ["| " + " | ".join(map(cell, headers)) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(map(cell, row)) + " |" for row in rows])


def _section(section: Section, analysis: StudyAnalysis, plots: dict[str, tuple[bytes, str]]) -> list[str]:
    level = "###" if section.detail else "##"  # the detail tables nest under KEY_NUMBERS
    parts = [f"{level} {section.title}"]
    if section.table:
        parts.append(_md_table(*section.table(analysis, True)))
    if section.verdicts:
        parts.append("\n".join(f"- **{v.label}** ({v.confidence} confidence): {v.conclusion}"
                               for v in prose.recipe_verdicts(analysis)))
    if section.per_recipe:
        for entry in analysis.headline:
            parts += [f"{level}# {recipe_label(entry)}: every variant on {entry.metric_label}",
                      _md_table(*section.per_recipe(analysis, entry))]
    if section.plots:
        parts += [f"![{name.replace('_', ' ')}](plots/{name}.png)\n\n{caption}" for name, (_, caption) in plots.items()]
    if section.lines:
        parts.append("\n".join(f"- {line}" for line in section.lines(analysis)))
    parts += section.paragraphs or []
    return parts


def render_markdown(analysis: StudyAnalysis, plots: dict[str, tuple[bytes, str]], title: str) -> str:
    """The summary: the study in brief, a partial study's warning, and the sections the summary shows, its detail
    tables gathered under one heading and followed by where the rest is."""
    parts = [f"# {title}", "\n".join(prose.summary_lines(analysis)),
             *(f"> **{line}**" for line in prose.partial_lines(analysis))]
    in_details = False
    for section in sections(analysis):
        if not section.summary:
            continue
        if section.detail != in_details:
            parts.append(KEY_NUMBERS if section.detail else EVERY_NUMBER)
            in_details = section.detail
        parts += _section(section, analysis, plots)
    if in_details:
        parts.append(EVERY_NUMBER)
    return "\n\n".join(parts) + "\n"
