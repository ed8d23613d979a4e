"""Run a transfer study: register its cells in the study's SQLite store, recover the ones that finished unheard,
run the rest through an executor (this machine's processes, `execute.local`, or Slurm jobs, `execute.slurm`)
under the one scheduler (`execute.scheduler`), and write the report. Resumable after any interruption,
`kill -9` included.

A cell's `metrics.json`, which its recipe writes last and atomically, is its completion marker; the scheduler
moves it into the store in one transaction, as a done cell, or as a diverged one when the recipe stopped on an
exploding loss (a result: not failed, not retried, not rerun).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import FileLock, Timeout

from align_proxy.kinds import recipe_kind
from align_proxy.run_metrics import METRICS_FILE, RunMetrics
from align_proxy.studies.execute.local import LocalExecutor, start_forkserver, visible_gpus
from align_proxy.studies.execute.scheduler import StudyRunError, run_cells
from align_proxy.studies.spec import Cell, StudySpec
from align_proxy.studies.store import ResultStore

if TYPE_CHECKING:  # the analysis (scipy) loads only when a report is written
    from align_proxy.studies.analysis import StudyAnalysis


@dataclass(frozen=True)
class WrittenReport:
    """A study's analysis and the report files written from it (name -> path: html, markdown, json, plot_*)."""

    analysis: StudyAnalysis
    files: dict[str, Path]


@dataclass(frozen=True)
class StudyOutcome:
    study_dir: Path
    total: int
    done: int
    failed: int
    ran: int  # cells run (or recovered) by this invocation
    report: WrittenReport | None = None
    diverged: int = 0  # cells whose training loss diverged: results, counted apart from done


@dataclass(frozen=True)
class StudyPaths:
    """Where a study keeps what: its store, each cell's directory, the shared base evaluations, its lock."""

    root: Path

    @property
    def db(self) -> Path:
        return self.root / "results.sqlite"

    @property
    def cells(self) -> Path:
        return self.root / "cells"

    @property
    def base_evals(self) -> Path:
        return self.root / "base_evals"

    @property
    def lock(self) -> Path:
        return self.root / ".study.lock"

    def cell(self, config_hash: str) -> Path:
        return self.cells / config_hash


def study_paths(study_dir: Path) -> StudyPaths:
    return StudyPaths(Path(study_dir))


def recipe_script(recipe: str) -> Path:
    script = recipe_kind(recipe).script_path  # the checkout's recipes/, or the copy an install ships
    if not script.is_file():
        raise StudyRunError(f"recipe script {script} not found: reinstall align-proxy")
    return script


def run_study(spec: StudySpec, jobs: int | None = None, retry_failed: bool = False, progress: bool = True,
              report: bool = True, executor: str = "local", cancel_on_interrupt: bool | None = None,
              ask_cancel=None, poll_s: float = 5.0) -> StudyOutcome:
    """Run every unfinished cell of `spec`, record results, and write the report. `executor`: "local" (this
    machine's GPUs or cores) or "slurm" (each cell a Slurm job; `align_proxy.studies.execute.slurm`), whose Ctrl-C
    cancels the study's jobs when `cancel_on_interrupt`, or as `ask_cancel(count)` answers when it is None."""
    if executor == "slurm":
        from align_proxy.studies.execute.slurm import SlurmUnavailable, require_slurm

        try:
            require_slurm()  # before the study directory or its store exists
        except SlurmUnavailable as err:
            raise StudyRunError(str(err)) from None
    elif any(plan.launch.get("num_machines", 1) > 1 for plan in spec.recipes):
        raise StudyRunError("a recipe's launch.num_machines is over 1: cells on several machines run as Slurm jobs; "
                            "use --executor slurm (or set num_machines: 1)")
    paths = study_paths(Path(spec.output_dir))
    paths.root.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(paths.lock))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise StudyRunError(f"another run of this study holds {paths.lock}; wait for it to finish "
                            "(a killed run releases the lock with its process)") from None
    try:
        scripts = {plan.recipe: recipe_script(plan.recipe) for plan in spec.recipes}
        configs = {plan.recipe: plan.config for plan in spec.recipes}
        # The cell server's imports overlap with resolving models (and building the ladder) here. A launched
        # recipe's cells exec `accelerate launch`, whose processes import everything anew: nothing to preload.
        kinds = [recipe_kind(plan.recipe) for plan in spec.recipes if not plan.launch]
        context = start_forkserver(kinds) if executor == "local" else None
        store = ResultStore(paths.db)
        cells = spec.cells()
        _register(store, spec, cells)
        ran = _run(spec, store, paths, scripts, configs, cells, executor, context, jobs, retry_failed, progress,
                   cancel_on_interrupt, ask_cancel, poll_s)
        statuses = [store.statuses()[c.config_hash] for c in cells]
    finally:
        lock.release()
    done = statuses.count("done")
    written = write_study_report(paths.root) if report and done else None
    return StudyOutcome(paths.root, len(cells), done, statuses.count("failed"), ran, written,
                        statuses.count("diverged"))


def _run(spec: StudySpec, store: ResultStore, paths: StudyPaths, scripts: dict, configs: dict, cells: list[Cell],
         executor: str, context, jobs: int | None, retry_failed: bool, progress: bool, cancel_on_interrupt,
         ask_cancel, poll_s: float) -> int:
    """Take over what an earlier run left (Slurm jobs to reattach to, cells to requeue, results to recover), then
    run the pending cells through the executor. Returns the cells settled or recovered here."""
    from align_proxy.studies.execute.slurm import SlurmExecutor, SlurmUnavailable

    if executor == "slurm":
        chosen = SlurmExecutor(store, paths, scripts, configs, spec.slurm_resources(), spec.name, poll_s)
    else:
        chosen = LocalExecutor(context, store, paths, scripts, configs, visible_gpus())
    try:
        running, settled = chosen.resume({c.config_hash for c in cells}, retry_failed)
        recovered = _recover_finished(store, cells, paths)
        statuses = store.statuses()
        pending = [c for c in cells if statuses[c.config_hash] == "pending"]
        limit = chosen.concurrency(pending, jobs)
        return settled + recovered + run_cells(chosen, pending, running, limit, len(cells), progress,
                                               cancel_on_interrupt, ask_cancel)
    except SlurmUnavailable as err:  # squeue failed on reattaching, or sbatch refused a submission
        raise StudyRunError(str(err)) from None


def _register(store: ResultStore, spec: StudySpec, cells: list[Cell]) -> None:
    """Record what the study is, resolve every model (building ladder rungs first), add its cells."""
    from align_proxy.models import registry

    for name in spec.models:
        model = registry.resolve(name)
        store.add_model(name, model.path, model.parameters, model.source)
    target = _target(spec)
    store.set_info(name=spec.name, cells=[c.config_hash for c in cells], target=target,
                   primary_metrics={p.recipe: p.metric for p in spec.recipes}, seeds=spec.seeds,
                   starts={p.recipe: p.start_from for p in spec.recipes if p.start_from},
                   rewards_from={p.recipe: p.reward_from for p in spec.recipes if p.reward_from},
                   judge=_judge(spec, cells))
    store.add_cells(cells)


def _judge(spec: StudySpec, cells: list[Cell]) -> dict | None:
    """Who judges the study's judged cells, each judge named by its content (`rewards.reward_identity`); a judge that
    is a cell of the study is named by that cell, its content read when the report is written (`_judge_now`)."""
    if spec.judge is None:
        return None
    from align_proxy.rewards import reward_identity

    judge = dict(spec.judge)
    specs = judge.pop("judge")
    if spec.judge_cell:
        judged = next((c.judge_from for c in cells if c.judge_from), None)
        return {**judge, "cell": {**spec.judge_cell, "config_hash": judged}, "judges": []}
    return {**judge, "judges": [reward_identity(s) for s in specs]}


def _judge_now(judge: dict | None, paths: StudyPaths) -> dict | None:
    """The study's judge for its report: a judge cell's model named by its content once the cell has trained it."""
    if not judge or "cell" not in judge:
        return judge
    from align_proxy.rewards import reward_identity
    from align_proxy.rewards.learned import is_reward_model_dir

    directory = paths.cell(judge["cell"]["config_hash"]) if judge["cell"]["config_hash"] else None
    trained = directory is not None and is_reward_model_dir(directory)
    return {**judge, "judges": [reward_identity(str(directory))] if trained else []}


def _target(spec: StudySpec) -> list | None:
    """(name, parameters) of the size gains are predicted at: a registry name or a parameter count."""
    from align_proxy.models import registry

    if spec.target is None:
        return None
    if isinstance(spec.target, (int, float)):
        return [f"{spec.target:.3g} parameters", float(spec.target)]
    return [str(spec.target), float(registry.parameter_count(str(spec.target)))]


def _recover_finished(store: ResultStore, cells: list[Cell], paths: StudyPaths) -> int:
    """Record cells that finished (metrics.json written) but were killed before the store heard."""
    statuses, recovered = store.statuses(), 0
    for cell in cells:
        cell_dir = paths.cell(cell.config_hash)
        if statuses[cell.config_hash] == "pending" and (cell_dir / METRICS_FILE).exists():
            store.record_result(cell.config_hash, RunMetrics.read(cell_dir), duration_s=0.0)
            recovered += 1
    return recovered


def write_study_report(study_dir: Path) -> WrittenReport:
    """Statistics over every finished cell of the study's current spec, and the report files."""
    from align_proxy.studies.analysis import analyse
    from align_proxy.studies.report import write_report

    store = ResultStore(study_paths(study_dir).db)
    info = store.info()
    current = set(info.get("cells", []))
    results = [r for r in store.results() if r.config_hash in current]
    target = tuple(info["target"]) if info.get("target") else None
    cells = [c for c in store.cells() if c["config_hash"] in current]
    analysis = analyse(results, store.models(), info.get("primary_metrics", {}), target=target, cells=cells,
                       starts=info.get("starts"), rewards_from=info.get("rewards_from"),
                       judge=_judge_now(info.get("judge"), study_paths(study_dir)))
    title = f"Transfer study: {info.get('name', study_dir.name)}"
    return WrittenReport(analysis, write_report(study_dir, analysis, results, title=title))
