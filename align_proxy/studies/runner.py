"""Run a transfer study: every cell through its recipe script, each in its own process, results in
the study's SQLite store, resumable after any interruption, `kill -9` included.

Cells run `recipes/<recipe>.py` exactly as `python recipes/<recipe>.py --config ... --flag value`
would, in a child process forked from a server that has already imported torch, transformers and
TRL (multiprocessing's forkserver): a crash takes down one cell, not the study, and a small cell
does not pay ~8 s of imports. A cell's `metrics.json`, which the recipe writes last and atomically,
is its completion marker; the runner moves it into the store in one transaction, as a done cell, or as a
diverged one when the recipe stopped on an exploding loss (a result: not failed, not retried, not rerun).
"""

from __future__ import annotations

import multiprocessing
import os
import runpy
import shutil
import sys
import time
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import FileLock, Timeout
from tqdm.auto import tqdm

from align_proxy.checkpoints import clear_for_attempt
from align_proxy.kinds import recipe_kind
from align_proxy.lifetime import CELL_PID, die_with_parent
# What running one cell means, whatever runs it; imported here too, where callers have always found it.
from align_proxy.studies.cell_runs import (StudyRunError, cell_argv, cell_command, fail_stranded,  # noqa: F401
                                           launch_flags, needed_dirs, read_metrics, settle_cell, startable, stranded)
from align_proxy.studies.spec import Cell, StudySpec
from align_proxy.studies.store import ResultStore

if TYPE_CHECKING:  # the analysis (scipy) loads only when a report is written
    from align_proxy.studies.analysis import StudyAnalysis

# Told to every cell on a GPU: how many cells may share that GPU at once, so each sizes its micro-batch to its share
# of the memory (align_proxy.speed) instead of all of them to the same free memory.
CELLS_PER_GPU = "ALIGN_PROXY_CELLS_PER_GPU"


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


def visible_gpus() -> list[str]:
    """The GPUs cells may use, as CUDA_VISIBLE_DEVICES names them for this process (indices, UUIDs or MIG
    names); none on a machine without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return []
    named = [g.strip() for g in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]
    return named or [str(i) for i in range(torch.cuda.device_count())]


def cells_per_gpu(gpus: list[str], jobs: int, processes: int = 1) -> int:
    """The most cells that can run on one GPU at once: `jobs` cells of up to `processes` GPUs each, placed on the
    least busy GPUs (`GpuSlots`), load at most the ceiling of their processes over the GPUs."""
    return max(1, -(-jobs * processes // len(gpus))) if gpus else 1


def default_jobs(gpus: list[str], processes: int = 1) -> int:
    """As many cells as the GPUs hold with one process per GPU (`processes`: the widest cell's; raise it with
    --jobs: small proxies share a card well, and cells go to the least busy GPUs); on a CPU, one
    single-threaded cell per core, since tiny models do not use two cores well in one process."""
    if gpus:
        return max(1, len(gpus) // processes)
    return max(1, (os.cpu_count() or 1) // processes)


class GpuSlots:
    """Which GPUs each running cell holds: a starting cell takes the GPUs running the fewest cells (the lowest
    index among equals), so N cells on N GPUs get one each and more share evenly. A cell of several
    processes (`launch`) takes that many distinct GPUs; the value is what its CUDA_VISIBLE_DEVICES gets."""

    def __init__(self, gpus: list[str]):
        self.load = {gpu: 0 for gpu in gpus}

    def check_width(self, count: int) -> None:
        """Refuse a cell of more processes than there are GPUs (on a GPU machine; CPU cells have no slots)."""
        if self.load and count > len(self.load):
            raise StudyRunError(f"a cell of {count} processes needs {count} GPUs; {len(self.load)} are visible "
                                f"({', '.join(self.load)}): lower launch.num_processes in the spec")

    def take(self, count: int = 1) -> str | None:
        if not self.load:
            return None
        self.check_width(count)
        chosen = sorted(self.load, key=self.load.get)[:count]  # a stable sort: ties go to the first listed
        for gpu in chosen:
            self.load[gpu] += 1
        return ",".join(chosen)

    def give(self, gpus: str | None) -> None:
        for gpu in gpus.split(",") if gpus is not None else []:
            self.load[gpu] -= 1


def recipe_script(recipe: str) -> Path:
    script = recipe_kind(recipe).script_path  # the checkout's recipes/, or the copy an install ships
    if not script.is_file():
        raise StudyRunError(f"recipe script {script} not found: reinstall align-proxy")
    return script


def run_study(spec: StudySpec, jobs: int | None = None, retry_failed: bool = False, progress: bool = True,
              report: bool = True, executor: str = "local", cancel_on_interrupt: bool | None = None,
              ask_cancel=None, poll_s: float = 5.0) -> StudyOutcome:
    """Run every unfinished cell of `spec`, record results, and write the report. `executor`: "local" (this
    machine's GPUs or cores) or "slurm" (each cell a Slurm job; `align_proxy.studies.slurm`), whose Ctrl-C
    cancels the study's jobs when `cancel_on_interrupt`, or as `ask_cancel(count)` answers when it is None."""
    if executor == "slurm":
        from align_proxy.studies.slurm import SlurmUnavailable, require_slurm

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
        # The cell server's imports overlap with resolving models (and building the ladder) here.
        context = _start_forkserver([recipe_kind(plan.recipe) for plan in spec.recipes]) if executor == "local" else None
        store = ResultStore(paths.db)
        cells = spec.cells()
        _register(store, spec, cells)
        if executor == "slurm":
            ran = _run_slurm(spec, store, paths, scripts, configs, cells, jobs, retry_failed, progress,
                             cancel_on_interrupt, ask_cancel, poll_s)
        else:
            _refuse_live_jobs(store)
            store.requeue(failed=retry_failed)
            recovered = _recover_finished(store, cells, paths)
            statuses = store.statuses()
            pending = [c for c in cells if statuses[c.config_hash] == "pending"]
            gpus = visible_gpus()
            slots = GpuSlots(gpus)
            widest = max((cell.processes for cell in pending), default=1)
            slots.check_width(widest)  # before any cell runs
            jobs = jobs or default_jobs(gpus, widest)
            launcher = CellLauncher(context, store, paths, scripts, configs, threads=max(1, (os.cpu_count() or 1) // jobs),
                                    cells_per_gpu=cells_per_gpu(gpus, jobs, widest))
            ran = _run_cells(launcher, pending, jobs, slots, len(cells), progress) + recovered
        statuses = [store.statuses()[c.config_hash] for c in cells]
    finally:
        lock.release()
    done = statuses.count("done")
    written = write_study_report(paths.root) if report and done else None
    return StudyOutcome(paths.root, len(cells), done, statuses.count("failed"), ran, written,
                        statuses.count("diverged"))


def _run_slurm(spec: StudySpec, store: ResultStore, paths: StudyPaths, scripts: dict, configs: dict, cells: list[Cell],
               jobs: int | None, retry_failed: bool, progress: bool, cancel_on_interrupt, ask_cancel,
               poll_s: float) -> int:
    """The Slurm executor's run: reattach to (or settle) the jobs an earlier coordinator left, then submit the
    pending cells as jobs and follow them to the end. Returns the cells settled here."""
    from align_proxy.studies.slurm import SlurmCells, SlurmUnavailable, run_slurm_cells

    slurm = SlurmCells(store, paths, scripts, configs, spec.slurm_resources(), spec.name, poll_s)
    bar = None
    try:
        running, settled = slurm.reattach({c.config_hash for c in cells})
        store.requeue(failed=retry_failed, keep=set(running))
        recovered = _recover_finished(store, cells, paths)
        statuses = store.statuses()
        pending = [c for c in cells if statuses[c.config_hash] == "pending"]
        unfinished = len(pending) + len(running)
        bar = tqdm(total=len(cells), initial=len(cells) - unfinished, desc="study cells (Slurm jobs)", unit="cell",
                   disable=not progress or not unfinished, dynamic_ncols=True)
        return len(settled) + recovered + run_slurm_cells(slurm, pending, running, jobs, bar, cancel_on_interrupt,
                                                           ask_cancel)
    except SlurmUnavailable as err:  # squeue failed on reattaching, or sbatch refused a submission
        raise StudyRunError(str(err)) from None
    finally:
        if bar is not None:
            bar.close()


def _refuse_live_jobs(store: ResultStore) -> None:
    """A local run must not rerun cells an earlier `--executor slurm` run left as jobs Slurm still runs."""
    if not store.jobs(running_only=True):
        return
    from align_proxy.studies.slurm import ACTIVE, squeue_states

    states = squeue_states() if shutil.which("squeue") else None
    live = [row["job_id"] for row in store.jobs(running_only=True) if states is not None and states.of(row["job_id"]) in ACTIVE]
    if live:
        raise StudyRunError(f"{len(live)} cell(s) of this study are Slurm jobs still queued or running "
                            f"({', '.join(live[:5])}): rerun with --executor slurm to follow them, or scancel them first")


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
                   rewards_from={p.recipe: p.reward_from for p in spec.recipes if p.reward_from})
    store.add_cells(cells)


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
        metrics_path = paths.cell(cell.config_hash) / "metrics.json"
        if statuses[cell.config_hash] == "pending" and metrics_path.exists():
            store.record_result(cell.config_hash, read_metrics(metrics_path), duration_s=0.0)
            recovered += 1
    return recovered


def _run_cells(launcher: CellLauncher, pending: list[Cell], jobs: int, gpus: GpuSlots, total: int,
               progress: bool) -> int:
    """Run the pending cells, `jobs` at a time, each once the cell it starts from (if any) is done."""
    if not pending:
        return 0
    store = launcher.store
    status = store.statuses()  # read once, then kept up to date here: this process is the only writer
    queue, running, finished = list(pending), {}, 0
    bar = tqdm(total=total, initial=total - len(pending), desc="study cells", unit="cell", disable=not progress,
               dynamic_ncols=True)

    def settled(config_hash: str, outcome: str) -> None:
        nonlocal finished
        status[config_hash] = outcome
        finished += 1
        bar.update(1)

    try:
        while queue or running:
            fail_stranded(queue, status, store, settled)
            for cell in startable(queue, status)[:max(0, jobs - len(running))]:
                queue.remove(cell)
                running[cell.config_hash] = launcher.start(cell, gpus.take(cell.processes))
                bar.set_postfix_str(f"{cell.recipe} {cell.variant} {cell.model} seed {cell.seed}", refresh=True)
            if not running:
                if queue:  # unreachable for a checked spec: start cells come earlier in it
                    raise StudyRunError(f"{len(queue)} cell(s) wait on cells that never run: {queue[0].config_hash}")
                break
            ready = wait([started.process.sentinel for started in running.values()])
            for config_hash, started in list(running.items()):
                if started.process.sentinel in ready:
                    started.process.join()
                    del running[config_hash]
                    gpus.give(started.gpu)
                    settled(config_hash, launcher.settle(started))
    finally:
        for started in running.values():  # interrupted (Ctrl-C): no cell outlives the study
            started.process.kill()
        bar.close()
    return finished


def _start_forkserver(kinds: list) -> multiprocessing.context.BaseContext:
    """The server cells fork from, having imported once what the study's recipe kinds import (torch, TRL, the
    trainers, the evaluations) and this module (every cell unpickles `run_cell` from it, and it imports torch),
    so a cell starts in well under a second."""
    from multiprocessing import forkserver

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__, *dict.fromkeys(module for kind in kinds for module in kind.imports)])
    forkserver.ensure_running()
    return context


@dataclass(frozen=True)
class StartedCell:
    process: multiprocessing.Process
    cell: Cell
    started: float
    gpu: str | None


@dataclass(frozen=True)
class CellLauncher:
    """What starting and settling a cell needs, fixed for a study's run: the process context (the forkserver),
    the store, the study's paths, each recipe's script and config, and the threads each cell may use."""

    context: object
    store: ResultStore
    paths: StudyPaths
    scripts: dict[str, Path]
    configs: dict[str, str]
    threads: int
    cells_per_gpu: int = 1

    def start(self, cell: Cell, gpu: str | None) -> StartedCell:
        cell_dir = self.paths.cell(cell.config_hash)
        # A killed attempt's leftovers never mix with this one; its complete checkpoints stay, and this attempt
        # resumes from the newest.
        checkpoint = clear_for_attempt(cell_dir)
        script, argv = cell_command(cell, self.scripts.get(cell.recipe), self.configs.get(cell.recipe), cell_dir,
                                    self.paths.base_evals, *needed_dirs(cell, self.paths.cell))
        argv += ["--resume_from_checkpoint", str(checkpoint)] if checkpoint else []
        launch = launch_flags(cell.launch)
        device = [f"CUDA_VISIBLE_DEVICES={gpu}"] if gpu is not None else []
        shown = ["accelerate", "launch", *launch] if cell.launch else ["python"]
        (cell_dir / "command.txt").write_text(" ".join([*device, *shown, str(script), *argv]) + "\n")
        self.store.mark_running(cell.config_hash)
        threads = max(1, self.threads // cell.processes)  # per process: a launched cell's processes share its cores
        proc = self.context.Process(target=run_cell, args=(str(script), argv, str(cell_dir / "cell.log"), threads, gpu,
                                                           launch, self.cells_per_gpu),
                                    name=f"cell-{cell.config_hash}", daemon=False)
        proc.start()
        return StartedCell(proc, cell, time.time(), gpu)

    def settle(self, started: StartedCell) -> str:
        """Record how a cell's process ended; returns its status: "done", "diverged" or "failed"."""
        exitcode = started.process.exitcode
        failure = None if exitcode == 0 else f"exit code {exitcode}" if exitcode > 0 else f"killed by signal {-exitcode}"
        return settle_cell(self.store, self.paths.cell(started.cell.config_hash), time.time() - started.started, failure)


def run_cell(script: str, argv: list[str], log_path: str, threads: int, gpu: str | None = None,
             launch: list[str] | None = None, sharing: int = 1) -> None:
    """A cell's process: die with the study, log to the cell's directory, run the recipe script on its GPUs;
    a cell of several processes becomes their `accelerate launch` (same process, so it still dies with the
    study, and its workers die with it: `align_proxy.lifetime`)."""
    die_with_parent()  # the forkserver exits with the study, and takes this cell with it
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if gpu is not None:
        # Read by CUDA when the recipe first touches the GPU: the forkserver never does (it only imports), so
        # the cell sees its GPUs as cuda:0, cuda:1, ...
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
        os.environ[CELLS_PER_GPU] = str(sharing)
        print(f"[align-proxy] cell on GPU {gpu} (CUDA_VISIBLE_DEVICES={gpu})", flush=True)
    if launch:
        os.environ[CELL_PID] = str(os.getpid())  # exec keeps the pid: the workers' parent is this process
        os.execv(sys.executable, [sys.executable, "-m", "accelerate.commands.launch", *launch, script, *argv])
    if "torch" in sys.modules:  # imported by the cell server before OMP_NUM_THREADS was set: tell it directly
        sys.modules["torch"].set_num_threads(threads)
    sys.argv = [script, *argv]
    try:
        runpy.run_path(script, run_name="__main__")
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


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
                       starts=info.get("starts"), rewards_from=info.get("rewards_from"))
    title = f"Transfer study: {info.get('name', study_dir.name)}"
    return WrittenReport(analysis, write_report(study_dir, analysis, results, title=title))
