"""The one scheduling loop (`align_proxy.studies.execute.scheduler`) over a fake executor: what it promises every
executor, without processes or Slurm."""

from __future__ import annotations

import signal
from dataclasses import dataclass

import pytest

from align_proxy.studies.execute.scheduler import StudyInterrupted, run_cells
from align_proxy.studies.spec import Cell


def cell(name: str, start_from: str | None = None) -> Cell:
    return Cell("m", "sft", "default", 0, {}, name, start_from=start_from)


class FakeStore:
    def __init__(self, cells: list[Cell]):
        self.status = {c.config_hash: "pending" for c in cells}
        self.errors: dict[str, str] = {}

    def statuses(self) -> dict[str, str]:
        return dict(self.status)

    def record_failure(self, config_hash: str, error: str) -> None:
        self.status[config_hash], self.errors[config_hash] = "failed", error


@dataclass
class FakeJob:
    config_hash: str


class FakeExecutor:
    """Jobs end oldest first, one per poll, as `outcomes` says (default done); Ctrl-C at poll `interrupt_at`."""

    label = "cells"

    def __init__(self, store: FakeStore, outcomes: dict | None = None, outlives_study: bool = False,
                 interrupt_at: int | None = None):
        self.store, self.outcomes, self.outlives_study = store, outcomes or {}, outlives_study
        self.interrupt_at, self.polls = interrupt_at, 0
        self.started: list[str] = []
        self.cancelled: list[str] = []
        self.most_running = 0

    def batches(self, ready):
        return [[c] for c in ready]

    def submit(self, cells):
        self.started += [c.config_hash for c in cells]
        return {c.config_hash: FakeJob(c.config_hash) for c in cells}

    def poll(self, running, stop):
        self.polls += 1
        self.most_running = max(self.most_running, len(running))
        if self.polls == self.interrupt_at:
            if not self.outlives_study:
                # What Python's own handler makes of a Ctrl-C, raised here. A real signal would be acted on wherever
                # the interpreter next looks, under whatever handler the test process holds then: in two full runs
                # of the suite one worker's SIGINT went unanswered mid-test, and what had swapped it was not found.
                raise KeyboardInterrupt
            signal.raise_signal(signal.SIGINT)  # a real Ctrl-C, through the handler the scheduler installed
            return []
        return [next(iter(running.values()))]

    def settle(self, job):
        self.store.status[job.config_hash] = self.outcomes.get(job.config_hash, "done")
        return self.store.status[job.config_hash]

    def cancel(self, jobs):
        self.cancelled += [job.config_hash for job in jobs]

    def note(self, running, started=None):
        return None


def test_cells_start_in_queue_order_at_most_limit_at_once_and_after_the_cells_they_need():
    cells = [cell("a"), cell("b", start_from="a"), cell("c"), cell("d")]
    executor = FakeExecutor(FakeStore(cells))
    assert run_cells(executor, cells, {}, limit=2, total=4, progress=False) == 4
    assert executor.started == ["a", "c", "b", "d"] and executor.most_running == 2
    assert set(executor.store.status.values()) == {"done"}


def test_a_cell_whose_start_cell_failed_is_failed_without_running():
    cells = [cell("a"), cell("b", start_from="a")]
    executor = FakeExecutor(FakeStore(cells), outcomes={"a": "failed"})
    assert run_cells(executor, cells, {}, limit=None, total=2, progress=False) == 2
    assert executor.started == ["a"]
    assert executor.store.errors["b"] == ("not run: the cell it starts from (a) failed; fix that one, then rerun "
                                          "with --retry-failed")


def test_ctrl_c_stops_the_processes_that_die_with_the_study(monkeypatch):
    cells = [cell("a"), cell("b")]
    executor = FakeExecutor(FakeStore(cells), interrupt_at=1)
    handled = []  # the signals the scheduler sets a handler for: none, Ctrl-C stays Python's
    monkeypatch.setattr(signal, "signal", lambda signum, handler: handled.append(signum))
    with pytest.raises(KeyboardInterrupt) as interrupt:
        run_cells(executor, cells, {}, limit=2, total=2, progress=False)
    assert not isinstance(interrupt.value, StudyInterrupted) and executor.cancelled == ["a", "b"]
    assert handled == []


@pytest.mark.parametrize("answer", [True, False])
def test_ctrl_c_cancels_jobs_that_outlive_the_study_only_when_asked_to(answer):
    cells = [cell("a"), cell("b")]
    executor = FakeExecutor(FakeStore(cells), outlives_study=True, interrupt_at=1)
    asked, handler = [], signal.getsignal(signal.SIGINT)
    with pytest.raises(StudyInterrupted) as interrupt:
        run_cells(executor, cells, {}, limit=None, total=2, progress=False, ask=lambda n: asked.append(n) or answer)
    assert asked == [2] and (interrupt.value.jobs, interrupt.value.cancelled) == (2, answer)
    assert executor.cancelled == (["a", "b"] if answer else [])
    assert signal.getsignal(signal.SIGINT) is handler  # the scheduler's own handler is gone
