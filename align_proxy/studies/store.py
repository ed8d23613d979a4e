"""A study's results store: one SQLite database in the study directory (stdlib sqlite3, WAL mode).

Every cell has one row in `cells` with its status; a finished cell's metrics go into `results` in the
same transaction that marks it done (or diverged: its training loss exploded, a result in itself), so a
kill at any moment leaves each cell either finished with exactly one result or not finished at all. A cell run
as a Slurm job has a row in `jobs` per attempt, written in the transaction that marks it running.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from align_proxy.run_metrics import RunMetrics

STATUSES = ("pending", "running", "done", "diverged", "failed")
FINISHED = ("done", "diverged")  # a cell with a result
SCHEMA = """
CREATE TABLE IF NOT EXISTS study (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS models (
    name TEXT PRIMARY KEY, path TEXT NOT NULL, parameters INTEGER NOT NULL, source TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cells (
    config_hash TEXT PRIMARY KEY,
    model TEXT NOT NULL, recipe TEXT NOT NULL, variant TEXT NOT NULL, seed INTEGER NOT NULL,
    overrides TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'running', 'done', 'diverged', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT, started_at REAL, finished_at REAL);
-- Slurm jobs (`--executor slurm`), one row per attempt of a cell. The row is written before sbatch runs, with the
-- submission's name (`batch`, also the jobs' Slurm comment) and the cell's index in it, so a coordinator killed
-- between sbatch and recording the id finds its jobs again by that name instead of submitting them twice.
CREATE TABLE IF NOT EXISTS jobs (
    config_hash TEXT NOT NULL REFERENCES cells (config_hash),
    attempt INTEGER NOT NULL,
    batch TEXT NOT NULL, batch_index INTEGER NOT NULL,
    job_id TEXT,
    folder TEXT NOT NULL,
    submitted_at REAL NOT NULL,
    state TEXT,
    PRIMARY KEY (config_hash, attempt));
CREATE TABLE IF NOT EXISTS results (
    config_hash TEXT PRIMARY KEY REFERENCES cells (config_hash),
    duration_s REAL NOT NULL,
    metrics TEXT NOT NULL);
"""


@dataclass(frozen=True)
class CellResult:
    """One finished cell, as the statistics and the report read it. A diverged cell has its base scores, its
    log and `diverged` (step and loss), and no trained scores. `recipe` is the store's name for the cell's recipe,
    its kind's label (`CellKind.display`: "sft (proxy-tuned)"), as every store since the first has it."""

    config_hash: str
    model: str
    parameters: int
    recipe: str
    variant: str
    seed: int
    base: dict[str, float]  # metric -> base model's score
    trained: dict[str, float]  # metric -> trained model's score
    items_base: dict[str, list[float]] = field(default_factory=dict)  # metric -> per-item scores
    items_trained: dict[str, list[float]] = field(default_factory=dict)  # same items, same order
    log_history: list[dict] = field(default_factory=list)  # the trainer's log (loss curve)
    duration_s: float = 0.0
    diverged: dict | None = None  # {"step", "loss"} when training diverged (Divergence.to_json()): no trained scores
    # A reward curve (metrics.json's train.curve): an RL run's with --curve_every, or a best-of-n cell's.
    curve: list[dict] = field(default_factory=list)
    # The cell's kind and typed parameters (metrics.json's, old layouts read as their kinds: RunMetrics.from_json).
    # A proxy-tuning cell's base scores are the large base's and its trained scores the steered model's.
    kind: str = "train"
    params: object | None = None

    @classmethod
    def from_metrics(cls, row: sqlite3.Row, parameters: int, metrics: RunMetrics | dict,
                     duration_s: float) -> CellResult:
        metrics = metrics if isinstance(metrics, RunMetrics) else RunMetrics.from_json(metrics)
        scores = metrics.scores
        return cls(row["config_hash"], row["model"], parameters, row["recipe"], row["variant"], row["seed"],
                   scores.base, scores.trained, scores.items_base, scores.items_trained, metrics.train.log_history,
                   duration_s, metrics.diverged.to_json() if metrics.diverged else None, metrics.train.curve,
                   metrics.kind, metrics.params)


class ResultStore:
    """The study's SQLite database; every method opens its own short transaction."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            self._create()
            return
        with self._connect() as db:  # an older database gains any table it lacks
            db.executescript(SCHEMA)
        self._migrate_statuses()

    def _migrate_statuses(self) -> None:
        """A database from before the `diverged` status: rebuild `cells` with the current CHECK constraint
        (SQLite cannot alter one), keeping every row, in one transaction (SQLite's own recipe for it)."""
        with self._connect() as db:
            sql = db.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'cells'").fetchone()[0]
            if "'diverged'" in sql:
                return
            db.execute("PRAGMA foreign_keys=OFF")  # results reference cells: kept, and checked before commit
            db.execute("BEGIN IMMEDIATE")
            try:
                sql = db.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'cells'").fetchone()[0]
                if "'diverged'" not in sql:  # another process may have migrated it while this one waited
                    create = SCHEMA[SCHEMA.index("CREATE TABLE IF NOT EXISTS cells"):].split(";")[0]
                    db.execute(create.replace("IF NOT EXISTS cells", "cells_migrated"))
                    db.execute("INSERT INTO cells_migrated SELECT * FROM cells")
                    db.execute("DROP TABLE cells")
                    db.execute("ALTER TABLE cells_migrated RENAME TO cells")
                    if db.execute("PRAGMA foreign_key_check").fetchall():
                        raise sqlite3.IntegrityError(f"{self.path}: results without their cell after migration")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _create(self) -> None:
        """Build the schema in a private file and link it into place, so that no reader (`--status`, a
        report, a second runner) ever opens a database without its tables; a database another process
        linked first wins and is kept."""
        staging = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        staging.unlink(missing_ok=True)
        try:
            db = sqlite3.connect(staging, isolation_level=None)
            try:
                db.execute("PRAGMA journal_mode=WAL")  # persistent: recorded in the file's header
                db.executescript(SCHEMA)
            finally:
                db.close()  # the last connection checkpoints and removes the -wal file
            try:
                os.link(staging, self.path)
            except FileExistsError:
                pass
            except OSError:  # a filesystem without hard links: rename, which cannot refuse an existing file
                if not self.path.exists():
                    os.replace(staging, self.path)
        finally:
            staging.unlink(missing_ok=True)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        try:
            db.row_factory = sqlite3.Row
            # WAL: readers (a report on a running study) never block the writer, and a commit is one
            # append to the log, which survives a kill of the writing process.
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA foreign_keys=ON")
            yield db
        finally:
            db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    # --- what the study is -------------------------------------------------------------------

    def set_info(self, **values) -> None:
        with self._transaction() as db:
            db.executemany("INSERT OR REPLACE INTO study (key, value) VALUES (?, ?)",
                           [(k, json.dumps(v)) for k, v in values.items()])

    def info(self) -> dict:
        with self._connect() as db:
            return {row["key"]: json.loads(row["value"]) for row in db.execute("SELECT key, value FROM study")}

    def add_model(self, name: str, path: str, parameters: int, source: str) -> None:
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO models (name, path, parameters, source) VALUES (?, ?, ?, ?)",
                       (name, path, parameters, source))

    def models(self) -> dict[str, int]:
        """Model name -> parameter count."""
        with self._connect() as db:
            return {row["name"]: row["parameters"] for row in db.execute("SELECT name, parameters FROM models")}

    def add_cells(self, cells) -> None:
        """Register cells (spec.Cell); a cell already known keeps its status and result."""
        with self._transaction() as db:
            db.executemany(
                "INSERT OR IGNORE INTO cells (config_hash, model, recipe, variant, seed, overrides) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [(c.config_hash, c.model, c.recipe, c.variant, c.seed, json.dumps(c.overrides, sort_keys=True, default=str))
                 for c in cells])

    # --- running -----------------------------------------------------------------------------

    def statuses(self) -> dict[str, str]:
        with self._connect() as db:
            return {row["config_hash"]: row["status"] for row in db.execute("SELECT config_hash, status FROM cells")}

    def requeue(self, failed: bool = False, keep: set[str] = frozenset()) -> int:
        """Put cells a killed run left 'running' (and, if asked, failed cells) back to pending; cells in `keep`
        (Slurm jobs still queued or running, which this run reattaches to) stay as they are."""
        states = ("running", "failed") if failed else ("running",)
        with self._transaction() as db:
            marks = ",".join("?" * len(states))
            hashes = [row[0] for row in db.execute(f"SELECT config_hash FROM cells WHERE status IN ({marks})", states)
                      if row[0] not in keep]
            db.executemany("UPDATE cells SET status = 'pending', error = NULL WHERE config_hash = ?",
                           [(h,) for h in hashes])
            return len(hashes)

    def mark_running(self, config_hash: str) -> None:
        with self._transaction() as db:
            db.execute("UPDATE cells SET status = 'running', attempts = attempts + 1, started_at = ?, "
                       "finished_at = NULL, error = NULL WHERE config_hash = ?", (time.time(), config_hash))

    def mark_submitting(self, config_hashes: list[str], batch: str, folder: str) -> None:
        """Before one sbatch of these cells (a job, or an array in this order): mark each running and add its
        attempt's job row under the submission's name, in one transaction."""
        now = time.time()
        with self._transaction() as db:
            for index, config_hash in enumerate(config_hashes):
                db.execute("UPDATE cells SET status = 'running', attempts = attempts + 1, started_at = ?, "
                           "finished_at = NULL, error = NULL WHERE config_hash = ?", (now, config_hash))
                db.execute("INSERT INTO jobs (config_hash, attempt, batch, batch_index, folder, submitted_at) "
                           "SELECT config_hash, attempts, ?, ?, ?, ? FROM cells WHERE config_hash = ?",
                           (batch, index, folder, now, config_hash))

    def record_job_ids(self, batch: str, job_ids: list[str]) -> None:
        """The Slurm ids sbatch gave a submission's cells, in the order they were submitted."""
        with self._transaction() as db:
            db.executemany("UPDATE jobs SET job_id = ? WHERE batch = ? AND batch_index = ?",
                           [(job_id, batch, index) for index, job_id in enumerate(job_ids)])

    def record_job_state(self, config_hash: str, state: str) -> None:
        """The Slurm state a cell's latest job ended in (COMPLETED, CANCELLED, TIMEOUT, ...)."""
        with self._transaction() as db:
            db.execute("UPDATE jobs SET state = ? WHERE config_hash = ? AND attempt = "
                       "(SELECT MAX(attempt) FROM jobs WHERE config_hash = ?)", (state, config_hash, config_hash))

    def jobs(self, running_only: bool = False) -> list[dict]:
        """Each cell's latest Slurm job (config_hash, attempt, batch, batch_index, job_id, folder, submitted_at,
        state) with the cell's status; with `running_only`, of the cells marked running."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT j.*, c.status FROM jobs j JOIN cells c USING (config_hash) WHERE j.attempt = "
                "(SELECT MAX(attempt) FROM jobs WHERE config_hash = j.config_hash)"
                + (" AND c.status = 'running'" if running_only else "") + " ORDER BY j.submitted_at, j.batch_index")
            return [dict(row) for row in rows]

    def submissions(self) -> int:
        """How many jobs were ever submitted for this study's cells (one per cell attempt run as a job)."""
        with self._connect() as db:
            return db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]

    def record_result(self, config_hash: str, metrics: RunMetrics | dict, duration_s: float) -> str:
        """Store a finished cell's metrics (its metrics.json) and mark it done, or diverged, in one transaction;
        returns the status.

        A cell that already has a result is refused: a result is never duplicated or replaced.
        """
        metrics = metrics if isinstance(metrics, RunMetrics) else RunMetrics.from_json(metrics)
        status = "diverged" if metrics.diverged else "done"
        with self._transaction() as db:
            db.execute("INSERT INTO results (config_hash, duration_s, metrics) VALUES (?, ?, ?)",
                       (config_hash, duration_s, json.dumps(metrics.to_json())))
            db.execute("UPDATE cells SET status = ?, finished_at = ?, error = NULL WHERE config_hash = ?",
                       (status, time.time(), config_hash))
        return status

    def record_failure(self, config_hash: str, error: str) -> None:
        with self._transaction() as db:
            db.execute("UPDATE cells SET status = 'failed', finished_at = ?, error = ? WHERE config_hash = ?",
                       (time.time(), error, config_hash))

    # --- reading -----------------------------------------------------------------------------

    def cells(self) -> list[dict]:
        """Every cell with its status, attempts and error (for `align-proxy study --status`), and its latest Slurm
        job's id and ended state (None for cells never run as a job)."""
        with self._connect() as db:
            rows = db.execute("SELECT c.config_hash, model, recipe, variant, seed, status, attempts, error, "
                              "started_at, finished_at, j.job_id, j.state AS job_state FROM cells c LEFT JOIN jobs j "
                              "ON j.config_hash = c.config_hash AND j.attempt = c.attempts "
                              "ORDER BY recipe, variant, model, seed")
            return [dict(row) for row in rows]

    def results(self) -> list[CellResult]:
        """Every finished cell's result (diverged ones included), in a stable order."""
        parameters = self.models()
        with self._connect() as db:
            rows = db.execute(
                "SELECT c.config_hash, c.model, c.recipe, c.variant, c.seed, r.duration_s, r.metrics "
                "FROM cells c JOIN results r USING (config_hash) WHERE c.status IN ('done', 'diverged') "
                "ORDER BY c.recipe, c.variant, c.model, c.seed").fetchall()
        return [CellResult.from_metrics(row, parameters.get(row["model"], 0), json.loads(row["metrics"]),
                                        row["duration_s"]) for row in rows]
