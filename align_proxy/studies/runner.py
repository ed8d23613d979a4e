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

import json
import multiprocessing
import os
import runpy
import socket
import sys
import time
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import FileLock, Timeout
from tqdm.auto import tqdm

from align_proxy.checkpoints import clear_for_attempt, remove_checkpoints
from align_proxy.kinds import recipe_kind
from align_proxy.lifetime import CELL_PID, die_with_parent
from align_proxy.run_metrics import RunMetrics
from align_proxy.studies.spec import Cell, StudySpec
from align_proxy.studies.store import ResultStore

if TYPE_CHECKING:  # the analysis (scipy) loads only when a report is written
    from align_proxy.studies.records import StudyAnalysis

LOG_TAIL_CHARS = 2000


class StudyRunError(RuntimeError):
    """The study cannot run (already running, recipe scripts missing); the message says what to do."""


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


def cell_argv(cell: Cell, config: str, output_dir: Path, base_evals: Path, start_model: Path | None = None) -> list[str]:
    """The recipe's command line for a cell: its config file, then every override as a flag; a cell that
    starts from another cell's model (`start_from`) gets that cell's directory as its model."""
    argv = ["--config", config, "--output_dir", str(output_dir), "--base_eval_cache", str(base_evals)]
    overrides = {**cell.overrides, **({"model_name_or_path": str(start_model)} if start_model else {})}
    for key, value in overrides.items():
        values = value if isinstance(value, list) else [value]  # e.g. a grid over reward_funcs lists
        argv += [f"--{key}", *(str(v).lower() if isinstance(v, bool) else str(v) for v in values)]
    return argv


PROXY_CELL_SCRIPT = Path(__file__).resolve().parents[1] / "proxy_tuning.py"  # its __main__ runs one proxy cell


def proxy_cell_argv(cell: Cell, output_dir: Path, expert: Path) -> list[str]:
    """A proxy-tuning cell's command line (`align_proxy.proxy_tuning.run_cell`)."""
    proxy = cell.proxy
    return ["--base", cell.model, "--expert", str(expert), "--small", proxy["small"], "--recipe", proxy["recipe"],
            "--variant", proxy["variant"], "--alpha", str(proxy["alpha"]), "--output_dir", str(output_dir)]


def run_study(spec: StudySpec, jobs: int | None = None, retry_failed: bool = False, progress: bool = True,
              report: bool = True) -> StudyOutcome:
    """Run every unfinished cell of `spec`, record results, and write the report."""
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
        # The cell server's imports overlap with resolving models (and building the ladder) here.
        context = _start_forkserver([recipe_kind(plan.recipe) for plan in spec.recipes])
        store = ResultStore(paths.db)
        cells = spec.cells()
        _register(store, spec, cells)
        store.requeue(failed=retry_failed)
        recovered = _recover_finished(store, cells, paths)
        statuses = store.statuses()
        pending = [c for c in cells if statuses[c.config_hash] == "pending"]
        gpus = visible_gpus()
        slots = GpuSlots(gpus)
        widest = max((cell.processes for cell in pending), default=1)
        slots.check_width(widest)  # before any cell runs
        jobs = jobs or default_jobs(gpus, widest)
        launcher = CellLauncher(context, store, paths, scripts, {plan.recipe: plan.config for plan in spec.recipes},
                                threads=max(1, (os.cpu_count() or 1) // jobs))
        ran = _run_cells(launcher, pending, jobs, slots, len(cells), progress)
        statuses = [store.statuses()[c.config_hash] for c in cells]
    finally:
        lock.release()
    done = statuses.count("done")
    written = write_study_report(paths.root) if report and done else None
    return StudyOutcome(paths.root, len(cells), done, statuses.count("failed"), ran + recovered, written,
                        statuses.count("diverged"))


def _register(store: ResultStore, spec: StudySpec, cells: list[Cell]) -> None:
    """Record what the study is, resolve every model (building ladder rungs first), add its cells."""
    from align_proxy.models import registry

    for name in spec.models:
        model = registry.resolve(name)
        store.add_model(name, model.path, model.parameters, model.source)
    target = _target(spec)
    store.set_info(name=spec.name, cells=[c.config_hash for c in cells], target=target,
                   primary_metrics={p.recipe: p.metric for p in spec.recipes}, seeds=spec.seeds,
                   starts={p.recipe: p.start_from for p in spec.recipes if p.start_from})
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
            store.record_result(cell.config_hash, _read_metrics(metrics_path), duration_s=0.0)
            recovered += 1
    return recovered


def _read_metrics(path: Path) -> RunMetrics:
    return RunMetrics.from_json(json.loads(path.read_text()))


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
            for cell, why in _stranded(queue, status):
                queue.remove(cell)
                store.record_failure(cell.config_hash, f"not run: the cell it starts from ({cell.start_from}) {why}; "
                                                       "fix that one, then rerun with --retry-failed")
                settled(cell.config_hash, "failed")
            startable = [c for c in queue if c.start_from is None or status[c.start_from] == "done"]
            for cell in startable[:max(0, jobs - len(running))]:
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


def _stranded(queue: list[Cell], status: dict[str, str]) -> list[tuple[Cell, str]]:
    """Queued cells that can never run, and why: the cell they start from failed or diverged (so left no
    model), or is itself stranded."""
    why = {h: ("diverged: it saved no model" if s == "diverged" else "failed") for h, s in status.items()
           if s in ("failed", "diverged")}
    stranded: list[tuple[Cell, str]] = []
    grew = True
    while grew:
        new = [c for c in queue if c.start_from in why and c.config_hash not in why]
        stranded += [(c, why[c.start_from]) for c in new]
        why |= {c.config_hash: "failed" for c in new}
        grew = bool(new)
    return stranded


def _start_forkserver(kinds: list) -> multiprocessing.context.BaseContext:
    """The server cells fork from, having imported once what the study's recipe kinds import (torch, TRL, the
    trainers, the evaluations), so a cell starts in well under a second."""
    from multiprocessing import forkserver

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(dict.fromkeys(module for kind in kinds for module in kind.imports)))
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

    def start(self, cell: Cell, gpu: str | None) -> StartedCell:
        cell_dir = self.paths.cell(cell.config_hash)
        # A killed attempt's leftovers never mix with this one; its complete checkpoints stay, and this attempt
        # resumes from the newest.
        checkpoint = clear_for_attempt(cell_dir)
        start_model = self.paths.cell(cell.start_from) if cell.start_from else None
        if cell.proxy:  # a proxy-tuning cell trains nothing: it steers its large base with the start cell's model
            script, argv = PROXY_CELL_SCRIPT, proxy_cell_argv(cell, cell_dir, start_model)
        else:
            argv = cell_argv(cell, self.configs[cell.recipe], cell_dir, self.paths.base_evals, start_model)
            argv += ["--resume_from_checkpoint", str(checkpoint)] if checkpoint else []
            script = self.scripts[cell.recipe]
        launch = launch_flags(cell.launch)
        device = [f"CUDA_VISIBLE_DEVICES={gpu}"] if gpu is not None else []
        shown = ["accelerate", "launch", *launch] if cell.launch else ["python"]
        (cell_dir / "command.txt").write_text(" ".join([*device, *shown, str(script), *argv]) + "\n")
        self.store.mark_running(cell.config_hash)
        threads = max(1, self.threads // cell.processes)  # per process: a launched cell's processes share its cores
        proc = self.context.Process(target=run_cell, args=(str(script), argv, str(cell_dir / "cell.log"), threads, gpu,
                                                           launch), name=f"cell-{cell.config_hash}", daemon=False)
        proc.start()
        return StartedCell(proc, cell, time.time(), gpu)

    def settle(self, started: StartedCell) -> str:
        """Record how a cell's process ended; returns its status: "done", "diverged" or "failed"."""
        config_hash, exitcode = started.cell.config_hash, started.process.exitcode
        cell_dir = self.paths.cell(config_hash)
        metrics_path = cell_dir / "metrics.json"
        if exitcode == 0 and metrics_path.exists():
            status = self.store.record_result(config_hash, _read_metrics(metrics_path), time.time() - started.started)
            remove_checkpoints(cell_dir)  # the finished model is what stays; checkpoints only served a resume
            return status
        reason = f"exit code {exitcode}" if exitcode >= 0 else f"killed by signal {-exitcode}"
        if exitcode == 0:
            reason = "the recipe exited without writing metrics.json"
        log = cell_dir / "cell.log"
        tail = log.read_text(errors="replace")[-LOG_TAIL_CHARS:] if log.exists() else ""
        self.store.record_failure(config_hash, f"{reason}; log: {log}\n{tail}")
        return "failed"


def launch_flags(launch: dict) -> list[str]:
    """The `accelerate launch` flags of a cell of several processes; [] for a plain cell. Each launch gets a
    free port for its processes' rendezvous, so concurrent cells never meet."""
    if not launch:
        return []
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return ["--config_file", launch["config_file"], "--num_processes", str(launch["num_processes"]),
            "--main_process_port", str(port)]


def run_cell(script: str, argv: list[str], log_path: str, threads: int, gpu: str | None = None,
             launch: list[str] | None = None) -> None:
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
                       starts=info.get("starts"))
    title = f"Transfer study: {info.get('name', study_dir.name)}"
    return WrittenReport(analysis, write_report(study_dir, analysis, results, title=title))
