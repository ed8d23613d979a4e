"""The completeness section: cells finished per recipe and model against the study's grid, and which are missing."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from align_proxy.studies.record import Record
from align_proxy.studies.store import CellResult


@dataclass(frozen=True)
class CellCount(Record):
    recipe: str
    model: str
    done: int
    expected: int
    diverged: int


@dataclass(frozen=True)
class MissingCell(Record):
    recipe: str
    variant: str
    model: str
    seed: int
    status: str
    cause: str = ""  # a failed cell's recorded error, its first line: the cause its log ends on (execute/cells.py)


@dataclass(frozen=True)
class Completeness(Record):
    """Cells finished against the study's grid (or, without the store's cell list, the grid the results imply)."""

    expected: int
    done: int
    complete: bool
    diverged: int
    expected_from: str
    by_recipe_model: list[CellCount]
    missing: list[MissingCell]
    models_without_results: list[str]


def completeness_section(results: list[CellResult], order: list[str], cells: list[dict] | None) -> Completeness:
    """Cells finished per recipe and model, and which are missing. Without the study's cell list, the
    expected grid is every recipe variant and seed seen in any result, on every model."""
    done = {(c.recipe, c.variant, c.model, c.seed) for c in results}
    causes = {}
    if cells is not None:
        expected = {(c["recipe"], c["variant"], c["model"], c["seed"]): c.get("status", "pending") for c in cells}
        causes = {(c["recipe"], c["variant"], c["model"], c["seed"]): _cause(c.get("error")) for c in cells}
    else:
        variants = sorted({(c.recipe, c.variant) for c in results})
        seeds = sorted({c.seed for c in results})
        expected = {(r, v, m, s): "not run" for (r, v) in variants for m in order for s in seeds}
    for key in done:
        expected[key] = "done" if expected.get(key) != "diverged" else "diverged"
    finished = {"done", "diverged"}
    table = defaultdict(lambda: {"done": 0, "expected": 0, "diverged": 0})
    for (recipe, _, model, _), status in expected.items():
        table[(recipe, model)]["expected"] += 1
        table[(recipe, model)]["done"] += status in finished
        table[(recipe, model)]["diverged"] += status == "diverged"
    missing = [MissingCell(r, v, m, s, status, causes.get((r, v, m, s), "")) for (r, v, m, s), status in
               sorted(expected.items(), key=lambda kv: str(kv[0])) if status not in finished]
    by_recipe_model = [CellCount(r, m, **counts) for (r, m), counts in
                       sorted(table.items(), key=lambda kv: (kv[0][0], _position(kv[0][1], order)))]
    return Completeness(expected=len(expected), done=len(expected) - len(missing),
                        complete=bool(expected) and not missing,
                        diverged=sum(s == "diverged" for s in expected.values()),
                        expected_from="study cells" if cells is not None else "inferred from finished cells",
                        by_recipe_model=by_recipe_model, missing=missing,
                        models_without_results=[m for m in order if m not in {c.model for c in results}])


def _cause(error: str | None) -> str:
    """The headline of a cell's recorded error ("exit code 1: OSError: [Errno 28] No space left on device"),
    without the log's path and tail that follow it."""
    return (error or "").splitlines()[0].split("; log: ")[0] if error else ""


def _position(model: str, order: list[str]) -> int:
    return order.index(model) if model in order else 0
