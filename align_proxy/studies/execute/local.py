"""The local executor: each cell a process on this machine, forked from a server that has already imported
torch, transformers and TRL (multiprocessing's forkserver), on the GPUs running the fewest cells, or on its share
of the cores.

A cell runs `recipes/<recipe>.py` exactly as `python recipes/<recipe>.py --config ... --flag value` would: a crash
takes down one cell, not the study, and a small cell does not pay ~8 s of imports. Its processes die with the
study (`align_proxy.lifetime`), so a killed study leaves no cell running.
"""

from __future__ import annotations

import multiprocessing
import os
import runpy
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path

from align_proxy.checkpoints import clear_for_attempt
from align_proxy.lifetime import CELL_PID, CELLS_PER_GPU, die_with_parent
from align_proxy.studies.cell_runs import cell_command
from align_proxy.studies.execute.cells import launch_flags, needed_dirs, settle_cell
from align_proxy.studies.execute.scheduler import StudyRunError
from align_proxy.studies.spec import Cell
from align_proxy.studies.store import ResultStore

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


def start_forkserver(kinds: list) -> multiprocessing.context.BaseContext:
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
    """A cell's process, as the local executor follows it."""

    process: multiprocessing.Process
    cell: Cell
    started: float
    gpu: str | None

    @property
    def config_hash(self) -> str:
        return self.cell.config_hash


class LocalExecutor:
    """Cells as processes of this machine: what starting and settling one needs, fixed for a study's run (the
    process context, the store, the study's paths, each recipe's script and config, the GPUs), and, once the
    pending cells are known (`concurrency`), the threads each cell may use and how many share a GPU."""

    label = "study cells"
    outlives_study = False

    def __init__(self, context, store: ResultStore, paths, scripts: dict[str, Path], configs: dict[str, str],
                 gpus: list[str]):
        self.context, self.store, self.paths, self.scripts, self.configs = context, store, paths, scripts, configs
        self.gpus, self.slots = gpus, GpuSlots(gpus)
        self.threads, self.cells_per_gpu = 1, 1

    def resume(self, wanted: set[str], retry_failed: bool) -> tuple[dict[str, StartedCell], int]:
        """Put the cells an earlier run left running (killed with it) back in the queue, the failed ones too when
        `retry_failed`; nothing is still running here. Refuses cells an earlier Slurm run left as live jobs."""
        _refuse_live_jobs(self.store)
        self.store.requeue(failed=retry_failed)
        return {}, 0

    def concurrency(self, pending: list[Cell], jobs: int | None) -> int:
        """How many cells run at once (`jobs`, else one per GPU or core), checked against the widest cell before
        any runs; sets each cell's share of the cores and of its GPU."""
        widest = max((cell.processes for cell in pending), default=1)
        self.slots.check_width(widest)  # before any cell runs
        jobs = jobs or default_jobs(self.gpus, widest)
        self.threads = max(1, (os.cpu_count() or 1) // jobs)
        self.cells_per_gpu = cells_per_gpu(self.gpus, jobs, widest)
        return jobs

    def batches(self, ready: list[Cell]) -> list[list[Cell]]:
        return [[cell] for cell in ready]  # a process per cell

    def submit(self, cells: list[Cell]) -> dict[str, StartedCell]:
        return {cell.config_hash: self.start(cell, self.slots.take(cell.processes)) for cell in cells}

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

    def poll(self, running: dict[str, StartedCell], stop: threading.Event) -> list[StartedCell]:
        """Wait for a cell's process to end (Ctrl-C raises here at once: `stop` is for executors that poll)."""
        ready = wait([started.process.sentinel for started in running.values()])
        return [started for started in running.values() if started.process.sentinel in ready]

    def settle(self, started: StartedCell) -> str:
        """Record how a cell's process ended; returns its status: "done", "diverged" or "failed"."""
        started.process.join()
        self.slots.give(started.gpu)
        exitcode = started.process.exitcode
        failure = None if exitcode == 0 else \
            f"exit code {exitcode}" if exitcode > 0 else f"killed by signal {-exitcode}"
        return settle_cell(self.store, self.paths.cell(started.cell.config_hash), time.time() - started.started,
                           failure)

    def cancel(self, jobs: list[StartedCell]) -> None:
        for started in jobs:
            started.process.kill()

    def note(self, running: dict[str, StartedCell], started: list[Cell] | None = None) -> str | None:
        cell = started[0] if started else None
        return f"{cell.recipe} {cell.variant} {cell.model} seed {cell.seed}" if cell else None


def _refuse_live_jobs(store: ResultStore) -> None:
    """A local run must not rerun cells an earlier `--executor slurm` run left as jobs Slurm still runs."""
    if not store.jobs(running_only=True):
        return
    from align_proxy.studies.execute.slurm import ACTIVE, squeue_states

    states = squeue_states() if shutil.which("squeue") else None
    live = [row["job_id"] for row in store.jobs(running_only=True)
            if states is not None and states.of(row["job_id"]) in ACTIVE]
    if live:
        raise StudyRunError(f"{len(live)} cell(s) of this study are Slurm jobs still queued or running "
                            f"({', '.join(live[:5])}): rerun with --executor slurm to follow them, "
                            "or scancel them first")


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
