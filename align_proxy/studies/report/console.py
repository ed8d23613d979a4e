"""What `align-proxy` prints as rich tables: a study's headline after it runs or reports (the report's console
sections, from `sections.SECTIONS`), a study's cells and their status, overoptimization curves and proxy-tuning's
gap closed."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from align_proxy.studies.analysis import StudyAnalysis
from align_proxy.studies.report import prose
from align_proxy.studies.report.formatting import (format_interval, format_parameters, format_share,
                                                   overoptimization_rows, recipe_label)
from align_proxy.studies.report.sections import sections


def print_report(console: Console, report) -> None:
    """The report's console sections from the analysis just computed (`runner.WrittenReport`), not re-read from
    report.json, and where the full report is."""
    if report is None:
        return
    analysis, files = report.analysis, report.files
    for section in sections(analysis):
        if not section.console:
            continue
        if section.verdicts:
            verdicts = prose.recipe_verdicts(analysis)
            console.print(headline_table(analysis, verdicts))
            for words in verdicts:
                console.print(f"[bold]{escape(words.label)}[/bold]: {escape(words.conclusion)}")
        elif section.id in TABLES:
            console.print(TABLES[section.id](analysis))
        for line in section.lines(analysis) if section.lines else ():
            console.print(f"- {escape(line)}", highlight=False)
    console.print(f"report: {files['html']} (also {files['markdown'].name}, {files['json'].name})")


def headline_table(analysis: StudyAnalysis, verdicts: list[prose.RecipeVerdict]) -> Table:
    """The headline, compact for a terminal: each recipe's verdict and gain per model, whether it transfers,
    and the confidence."""
    table = Table(title="does each recipe's gain transfer? (gain of the best variant, 95% interval)")
    table.add_column("recipe", no_wrap=True)
    table.add_column("judged on", no_wrap=True)
    for model in analysis.models:
        table.add_column(f"{model.name} ({format_parameters(model.parameters)})", no_wrap=True)
    for column in ("transfers", "confidence"):
        table.add_column(column, no_wrap=True)
    for entry, words in zip(analysis.headline, verdicts):
        by_model = {scale.model: scale for scale in entry.scales}
        cells = [_verdict_text(by_model.get(m.name)) for m in analysis.models]
        transfers = entry.transfer.transfers if entry.transfer else "-"
        table.add_row(recipe_label(entry), entry.metric, *cells, transfers, words.confidence)
    return table


def _verdict_text(scale) -> str:
    if scale is None:
        return "-"
    colour = {"helps": "green", "hurts": "red", "diverges": "magenta"}.get(scale.verdict, "yellow")
    return f"[{colour}]{scale.verdict}[/{colour}] {format_interval(scale.gain)}"


def overoptimization_table(curves) -> Table:
    """Overoptimization curves (`records.OveroptimizationCurve`): the report's table, for a terminal."""
    table = Table(title="gold reward against d = sqrt(KL) per proxy reward model: Gao et al.'s fit, peak d* and the "
                        "gold gain there (95% intervals over prompts)")
    headers, rows = overoptimization_rows(curves)
    for column in headers:
        table.add_column(column)  # intervals wrap rather than being cut at the console's width
    for row in rows:
        table.add_row(*row)
    return table


# A console section's table, by section id: the report's rows under a title that says, on a terminal without the
# report's prose, what the intervals cover. The headline's is `headline_table`, compact, printed with its verdicts.
TABLES = {"overoptimization": lambda analysis: overoptimization_table(analysis.overoptimization.curves)}


def study_status_table(study_dir: Path) -> Table | None:
    """Every cell of the study in `study_dir` with its status, attempts and first error line (and, for a study
    run with --executor slurm, its job and the job's state, live from squeue where it can be); None before any
    study has run there."""
    from align_proxy.studies.runner import study_paths
    from align_proxy.studies.store import ResultStore

    db = study_paths(study_dir).db
    if not db.exists():
        return None
    cells = ResultStore(db).cells()
    jobs = [c for c in cells if c["job_id"] or c["job_state"]]
    states = {}
    if jobs:
        from align_proxy.studies.execute.slurm import slurm_job_states

        states = slurm_job_states([{**c, "state": c["job_state"]} for c in jobs])
    table = Table(title=f"cells of {study_dir}")
    for column in ("cell", "recipe", "variant", "model", "seed", "status", "attempts",
                   *(("slurm job", "slurm state") if jobs else ()), "error"):
        table.add_column(column)
    for cell in cells:
        error = (cell["error"] or "").splitlines()[0] if cell["error"] else ""
        job = (cell["job_id"] or "-", states.get(cell["config_hash"], "-")) if jobs else ()
        table.add_row(cell["config_hash"], cell["recipe"], cell["variant"], cell["model"], str(cell["seed"]),
                      cell["status"], str(cell["attempts"]), *job, error)
    return table


def proxy_tuning_table(scores, gaps: dict, small: str, large: str) -> Table:
    """`align-proxy proxy-tune`'s scores (`proxy_tuning.ProxyTuningScores`) per metric, and the gap closed where the
    large model tuned directly was scored (`gaps`: metric -> `records.GapClosed`)."""
    from align_proxy.metrics import metric

    table = Table(title="proxy-tuning: gap closed = (proxy-tuned - base) / (tuned - base), 95% interval over items")
    for column in ("metric", f"base {large}", f"expert ({small} tuned)", "proxy-tuned", f"tuned {large}",
                   "gap closed"):
        table.add_column(column, no_wrap=True)
    for name, value in scores.base.metrics.items():
        tuned = f"{scores.tuned.metrics[name]:.4f}" if scores.tuned else "-"
        gap = format_share(gaps[name].gap_closed) if name in gaps else "-"
        table.add_row(metric(name).label, f"{value:.4f}", f"{scores.expert.metrics[name]:.4f}",
                      f"{scores.proxy.metrics[name]:.4f}", tuned, gap)
    return table
