"""What `align-proxy` prints as rich tables: a study's headline after it runs or reports (the report's console
sections, from `sections.SECTIONS`), a study's cells and their status, overoptimization curves and proxy-tuning's
gap closed."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from align_proxy.studies.analysis import StudyAnalysis
from align_proxy.studies.report import prose
from align_proxy.studies.report.formatting import (format_interval, format_parameters, format_share,
                                                   OVEROPTIMIZATION_COLUMNS, overoptimization_rows, recipe_label)
from align_proxy.studies.report.sections import sections


def print_report(console: Console, report, wide: bool = False) -> None:
    """The report's console sections from the analysis just computed (`runner.WrittenReport`), not re-read from
    report.json, and where the full report is: each recipe's action, then its claims one to a line (`wide`: the
    report's whole conclusion on one line, as `--wide` prints it)."""
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
                print_verdict(console, words, wide)
        elif section.id in TABLES:
            console.print(TABLES[section.id](analysis))
        for line in section.lines(analysis) if section.lines else ():
            print_hanging(console, Text(line), "- ", wide)
    console.print(f"report: {files['html']} (also {files['markdown'].name}, {files['json'].name})", soft_wrap=False)


def print_verdict(console: Console, words: prose.RecipeVerdict, wide: bool = False) -> None:
    """A recipe's heading (its action and confidence) and each claim on its own line with the number behind it;
    `wide`: the report's one-line conclusion."""
    if wide:
        print_hanging(console, Text.assemble((words.label, "bold"), f": {words.conclusion}"), "", wide)
        return
    heading = Text.assemble((words.label, "bold"), f": {words.action} ({words.confidence} confidence)")
    print_hanging(console, heading, "", rest="    ")
    for claim in words.claims:
        print_hanging(console, Text(claim.console), "  - ")


def print_hanging(console: Console, text: Text, first: str, wide: bool = False, rest: str | None = None) -> None:
    """`text` after `first`, wrapped at the console's width with the lines after the first indented by `rest`
    (as far as `first` without it), so a list item reads as one; `wide`: on one line, however long. A word longer
    than the line folds rather than being cut."""
    rest = " " * len(first) if rest is None else rest
    if wide:
        console.print(Text(first) + text, soft_wrap=True)
        return
    lines = text.wrap(console, max(console.width - max(len(first), len(rest)), 20), overflow="fold")
    for i, line in enumerate(lines):
        line.rstrip()
        console.print(Text(rest if i else first) + line, soft_wrap=True)


class Fitted:
    """A table printed whole where the console has room for all of it, else its narrower form: a terminal as wide
    as the table (or `--wide`) sees it whole, 120 columns the narrow one."""

    def __init__(self, whole: Table, narrow: RenderableType):
        self.whole, self.narrow = whole, narrow

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        natural = Measurement.get(console, options.update_width(UNBOUNDED), self.whole).maximum
        yield self.whole if natural <= options.max_width else self.narrow


UNBOUNDED = 100_000  # a width no table reaches: what a table measures in it is its width unwrapped

HEADLINE_TITLE = "does each recipe's gain transfer? (gain of the best variant, 95% interval)"


def headline_table(analysis: StudyAnalysis, verdicts: list[prose.RecipeVerdict]) -> Fitted:
    """The headline, compact for a terminal: each recipe's verdict and gain per model, whether it transfers, and
    the confidence. One column per model where that fits the console, else one row per recipe and model."""
    return Fitted(_headline_by_model(analysis, verdicts), _headline_by_row(analysis, verdicts))


def _headline_by_model(analysis: StudyAnalysis, verdicts: list[prose.RecipeVerdict]) -> Table:
    table = Table(title=HEADLINE_TITLE)
    table.add_column("recipe", no_wrap=True)
    table.add_column("judged on", no_wrap=True)
    for model in analysis.models:
        table.add_column(_model_label(model), no_wrap=True)
    for column in ("transfers", "confidence"):
        table.add_column(column, no_wrap=True)
    for entry, words in zip(analysis.headline, verdicts):
        by_model = {scale.model: scale for scale in entry.scales}
        cells = [_verdict_text(by_model.get(m.name)) for m in analysis.models]
        transfers = entry.transfer.transfers if entry.transfer else "-"
        table.add_row(recipe_label(entry), entry.metric, *cells, transfers, words.confidence)
    return table


def _headline_by_row(analysis: StudyAnalysis, verdicts: list[prose.RecipeVerdict]) -> Table:
    """One row per recipe and model, so its width does not grow with the rungs; the recipe's own columns (what
    it is judged on, whether it transfers, the confidence) on its first row."""
    table = Table(title=HEADLINE_TITLE)
    table.add_column("recipe", min_width=6)  # a long label (`rloo (from sft on ladder-s, against reward)`) wraps
    table.add_column("judged on", no_wrap=True)
    # Names as short as a registry's stay whole (the recipe's label wraps instead); among longer ones, such as a
    # model's directory path, the column folds. The numbers never do.
    labels = [_model_label(model) for model in analysis.models]
    table.add_column("model", overflow="fold", no_wrap=max(map(len, labels), default=0) <= MODEL_COLUMN)
    for column in ("verdict", "gain [95% interval]", "transfers", "confidence"):
        table.add_column(column, no_wrap=True)
    for entry, words in zip(analysis.headline, verdicts):
        by_model = {scale.model: scale for scale in entry.scales}
        own = [recipe_label(entry), entry.metric, entry.transfer.transfers if entry.transfer else "-",
               words.confidence]
        for i, model in enumerate(analysis.models):
            recipe, metric, transfers, level = own if i == 0 else [""] * 4
            scale = by_model.get(model.name)
            verdict = _coloured(scale.verdict) if scale else "-"
            table.add_row(recipe, metric, labels[i], verdict, format_interval(scale.gain) if scale else "-",
                          transfers, level, end_section=i == len(analysis.models) - 1)
    return table


MODEL_COLUMN = 40  # the narrow headline's model labels up to this long never wrap: a registry name, not a path


def _model_label(model) -> str:
    return f"{model.name} ({format_parameters(model.parameters)})"


def _verdict_text(scale) -> str:
    if scale is None:
        return "-"
    return f"{_coloured(scale.verdict)} {format_interval(scale.gain)}"


def _coloured(verdict: str) -> str:
    colour = {"helps": "green", "hurts": "red", "diverges": "magenta"}.get(verdict, "yellow")
    return f"[{colour}]{verdict}[/{colour}]"


OVEROPTIMIZATION_TITLE = ("gold reward against d = sqrt(KL) per proxy reward model: Gao et al.'s fit, peak d* and the "
                          "gold gain there (95% intervals over prompts)")
# The narrow form's two tables, by the whole table's headers: where each curve ends, and the fit with its peak.
CURVE_ENDS = ("form", "reward model", "seed", "points", "proxy gain", "gold start -> end",
              OVEROPTIMIZATION_COLUMNS[-1])
CURVE_FIT = ("form", "reward model", "seed", "alpha", "beta", "peak d*", "gold gain at d*")


def overoptimization_table(curves) -> Fitted:
    """Overoptimization curves (`records.OveroptimizationCurve`): the report's table for a terminal, whole where it
    fits, else split in two: where each curve ends, and Gao et al.'s fit with its peak (an interval's bounds
    under its estimate)."""
    headers, rows = overoptimization_rows(curves)
    whole = Table(title=OVEROPTIMIZATION_TITLE)
    for column in headers:
        whole.add_column(column)  # intervals wrap rather than being cut at the console's width
    for row in rows:
        whole.add_row(*row)
    named = [dict(zip(headers, row)) for row in rows]
    ends = Table(title="each proxy reward model's curve at its end (KL: best-of-n's formula / pool / policy)")
    fit = Table(title="Gao et al.'s fit against d = sqrt(KL): peak d* and the gold gain there (95% intervals over "
                      "prompts)")
    for table, columns in ((ends, CURVE_ENDS), (fit, CURVE_FIT)):
        for column in columns:  # a long reward model's name wraps, not a number
            table.add_column("KL at end" if column == OVEROPTIMIZATION_COLUMNS[-1] else column,
                             no_wrap=column != "reward model")
        for row in named:
            table.add_row(*(row[c].replace(" [", "\n[", 1) if table is fit else row[c] for c in columns))
    return Fitted(whole, Group(ends, fit))


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
        # Hashes, seeds and states stay whole; names, a model's directory and the error wrap to fit the width.
        table.add_column(column, no_wrap=column not in ("recipe", "variant", "model", "error"))
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
    # The numbers never wrap or shrink to "…"; the metric's label and the gap's interval wrap instead, so the table
    # fits 120 columns.
    table.add_column("metric")
    for column in (f"base\n{large}", f"expert\n({small} tuned)", "proxy-tuned", f"tuned\n{large}"):
        table.add_column(column, no_wrap=True, justify="right")
    table.add_column("gap closed")
    for name, value in scores.base.metrics.items():
        tuned = f"{scores.tuned.metrics[name]:.4f}" if scores.tuned else "-"
        gap = format_share(gaps[name].gap_closed) if name in gaps else "-"
        table.add_row(metric(name).label, f"{value:.4f}", f"{scores.expert.metrics[name]:.4f}",
                      f"{scores.proxy.metrics[name]:.4f}", tuned, gap)
    return table
