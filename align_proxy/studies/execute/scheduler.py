"""One scheduling loop for a study's cells, whatever runs them: it starts each cell once the cells it needs
(`Cell.needs`) are done, in the spec's order and at most `limit` at a time, fails the cells that can never run,
settles each ended cell into the store, shows a progress bar, and handles Ctrl-C.

What runs a cell is an executor shaped like submitit's: `submit(cells) -> {config_hash: job}`, `poll(running)` for
the jobs that ended, `settle(job)` into the store, `cancel(jobs)`; before the loop, `resume` takes over what an
earlier run left and `concurrency` says how many cells run at once. This machine's processes (`local.LocalExecutor`)
die with the study; Slurm jobs (`slurm.SlurmExecutor`) outlive it, so a Ctrl-C asks before it cancels them.
"""

from __future__ import annotations

import signal
import threading
from typing import TYPE_CHECKING, Protocol

from tqdm.auto import tqdm

if TYPE_CHECKING:
    from align_proxy.studies.spec import Cell
    from align_proxy.studies.store import ResultStore


class StudyRunError(RuntimeError):
    """The study cannot run (already running, recipe scripts missing); the message says what to do."""


class StudyInterrupted(KeyboardInterrupt):
    """Ctrl-C on a Slurm study's coordinator: how many jobs were still queued or running, and whether they were
    cancelled (if not, they run on, and a rerun reattaches to them)."""

    def __init__(self, jobs: int, cancelled: bool):
        super().__init__(jobs, cancelled)
        self.jobs, self.cancelled = jobs, cancelled


class Job(Protocol):
    """A started cell, as its executor follows it."""

    config_hash: str


class Executor(Protocol):
    """What runs cells for the scheduler."""

    store: ResultStore
    label: str  # the progress bar's description
    outlives_study: bool  # whether its jobs run on when the study's process stops (Slurm's do; processes do not)

    def resume(self, wanted: set[str], retry_failed: bool) -> tuple[dict[str, Job], int]:
        """Take over what an earlier run of the study left: the jobs still running (to follow), how many cells
        ended meanwhile (settled here); the rest of its running cells, and its failed ones when `retry_failed`,
        go back to pending."""

    def concurrency(self, pending: list[Cell], jobs: int | None) -> int | None:
        """How many cells may be unfinished at once (None: no limit), `jobs` when given."""

    def batches(self, ready: list[Cell]) -> list[list[Cell]]:
        """The ready cells in the groups `submit` takes them in, in queue order."""

    def submit(self, cells: list[Cell]) -> dict[str, Job]:
        """Start these cells; their jobs by config hash."""

    def poll(self, running: dict[str, Job], stop: threading.Event) -> list[Job]:
        """The running jobs that have ended, in `running`'s order: waits for one, or for one polling interval
        (ended early by `stop`), and then may return none."""

    def settle(self, job: Job) -> str:
        """Record how an ended job's cell ended; its status: "done", "diverged" or "failed"."""

    def cancel(self, jobs: list[Job]) -> None:
        """Stop these jobs (a study stopped early)."""

    def note(self, running: dict[str, Job], started: list[Cell] | None = None) -> str | None:
        """What the progress bar says beside the count, after `started` were submitted or a job was settled
        (None: leave it as it is)."""


def stranded(queue: list[Cell], status: dict[str, str]) -> list[tuple[Cell, str]]:
    """Queued cells that can never run, and why: a cell they need (`Cell.needs`: the one they start from, the one
    their reward model comes from, the one whose reward model judges them) failed or diverged (so left no model),
    or is itself stranded."""
    why = {h: ("diverged: it saved no model" if s == "diverged" else "failed") for h, s in status.items()
           if s in ("failed", "diverged")}
    found: list[tuple[Cell, str]] = []
    grew = True
    while grew:
        new = [(c, next(h for h in c.needs if h in why)) for c in queue
               if c.config_hash not in why and any(h in why for h in c.needs)]
        found += [(c, f"{_role(c, needed)} ({needed}) {why[needed]}") for c, needed in new]
        why |= {c.config_hash: "failed" for c, _ in new}
        grew = bool(new)
    return found


def _role(cell: Cell, needed: str) -> str:
    return ("the cell it starts from" if needed == cell.start_from else
            "the cell its reward model comes from" if needed == cell.reward_from else
            "the cell whose reward model judges it")


def startable(queue: list[Cell], status: dict[str, str]) -> list[Cell]:
    """Queued cells whose needed cells are all done, in queue order."""
    return [c for c in queue if all(status[h] == "done" for h in c.needs)]


def fail_stranded(queue: list[Cell], status: dict[str, str], store, settled) -> None:
    """Take the stranded cells out of `queue`, record each as failed with the reason and how to fix it, and tell
    `settled(config_hash, "failed")`."""
    for cell, why in stranded(queue, status):
        queue.remove(cell)
        store.record_failure(cell.config_hash, f"not run: {why}; fix that one, then rerun with --retry-failed")
        settled(cell.config_hash, "failed")


def run_cells(executor: Executor, pending: list[Cell], running: dict[str, Job], limit: int | None, total: int,
              progress: bool = True, cancel_on_interrupt: bool | None = None, ask=None) -> int:
    """Run the pending cells through `executor`, each once the cells it needs are done (at most `limit` unfinished
    at once when given), follow them and the `running` jobs an earlier run left, and settle each as it ends.
    Returns the cells settled here. On Ctrl-C, jobs that die with the study are stopped; jobs that outlive it
    are cancelled if `cancel_on_interrupt` (None: `ask(count)` decides; no ask: they run on)."""
    store = executor.store
    status = store.statuses()  # read once, then kept up to date here: this process is the only writer
    queue, finished = list(pending), 0
    unfinished = len(pending) + len(running)
    bar = tqdm(total=total, initial=total - unfinished, desc=executor.label, unit="cell",
               disable=not progress or not unfinished, dynamic_ncols=True)

    def show(note: str | None) -> None:
        if note is not None:
            bar.set_postfix_str(note, refresh=True)

    def settled(config_hash: str, outcome: str) -> None:
        nonlocal finished
        status[config_hash] = outcome
        finished += 1
        bar.update(1)
        show(executor.note(running))

    # A Ctrl-C for jobs that outlive the study sets a flag the loop reads between steps, rather than raising
    # wherever the coordinator happens to be (inside sbatch, squeue, a store write or the progress bar's lock, any
    # of which an exception can leave half done or hung); a second Ctrl-C stops at once. Processes that die with
    # the study have nothing to leave half done: Ctrl-C raises at once, and they are stopped.
    stop = threading.Event()
    previous = _catch_interrupts(stop) if executor.outlives_study else None
    try:
        while (queue or running) and not stop.is_set():
            fail_stranded(queue, status, store, settled)
            ready = startable(queue, status)
            room = len(ready) if limit is None else max(0, limit - len(running))
            for group in executor.batches(ready[:room]):
                for cell in group:
                    queue.remove(cell)
                running.update(executor.submit(group))
                show(executor.note(running, group))
            if not running:
                if queue:  # unreachable for a checked spec: start cells come earlier in it
                    raise StudyRunError(f"{len(queue)} cell(s) wait on cells that never run: {queue[0].config_hash}")
                break
            for job in executor.poll(running, stop):
                del running[job.config_hash]
                settled(job.config_hash, executor.settle(job))
        if stop.is_set():
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        if not executor.outlives_study:
            raise
        cancel = cancel_on_interrupt if cancel_on_interrupt is not None else (ask(len(running)) if ask and running
                                                                             else False)
        if cancel and running:
            executor.cancel(list(running.values()))
        raise StudyInterrupted(len(running), bool(cancel)) from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        if not executor.outlives_study and running:  # interrupted (Ctrl-C): no cell outlives the study
            executor.cancel(list(running.values()))
        bar.close()
    return finished


def _catch_interrupts(stop: threading.Event):
    """Make Ctrl-C set `stop` (a second one raises); the handler it replaces, None off the main thread."""

    def on_interrupt(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGINT, on_interrupt)
