"""The results store's file: it appears with its tables already in it, and reopening keeps what it holds."""

from __future__ import annotations

import json
import os
import sqlite3
from contextlib import closing

from align_proxy.studies import store as store_module
from align_proxy.studies.store import ResultStore


def tables(path) -> set[str]:
    with closing(sqlite3.connect(path)) as db:
        return {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def test_a_new_database_appears_with_its_schema(tmp_path, monkeypatch):
    """A reader polling for the file (the CLI's --status, a report, a test) must never open it schemaless."""
    target = tmp_path / "study" / "results.sqlite"
    seen, real_link = [], os.link

    def link(source, destination):
        seen.append((os.path.exists(destination), tables(source)))
        real_link(source, destination)

    monkeypatch.setattr(store_module.os, "link", link)
    ResultStore(target)
    assert seen == [(False, {"study", "models", "cells", "results", "jobs"})]
    assert tables(target) == {"study", "models", "cells", "results", "jobs"}
    assert sorted(p.name for p in target.parent.iterdir()) == ["results.sqlite"]  # no staging file left
    with closing(sqlite3.connect(target)) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_reopening_keeps_the_database(tmp_path):
    path = tmp_path / "results.sqlite"
    ResultStore(path).set_info(name="kept")
    assert ResultStore(path).info() == {"name": "kept"}


def test_a_database_linked_first_by_another_process_wins(tmp_path, monkeypatch):
    path = tmp_path / "results.sqlite"
    ResultStore(path).set_info(name="first")

    monkeypatch.setattr(ResultStore, "__init__", lambda self, p: setattr(self, "path", p))
    late = ResultStore(path)
    late._create()  # as if this process had checked for the file just before the other one linked it
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT value FROM study WHERE key = 'name'").fetchone() == ('"first"',)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("results.sqlite")) == []


def test_a_database_from_before_the_diverged_status_opens_and_keeps_its_rows(tmp_path):
    old_schema = store_module.SCHEMA.replace("'done', 'diverged', 'failed'", "'done', 'failed'")
    path = tmp_path / "results.sqlite"
    with closing(sqlite3.connect(path)) as db:
        db.executescript(old_schema)
        db.execute("INSERT INTO models VALUES ('m', '/m', 10, 'local')")
        db.execute("INSERT INTO cells (config_hash, model, recipe, variant, seed, overrides, status) "
                   "VALUES ('a', 'm', 'sft', 'default', 0, '{}', 'done'), ('b', 'm', 'sft', 'lr=100', 0, '{}', 'pending')")
        db.execute("INSERT INTO results VALUES ('a', 1.0, ?)", ('{"eval": {"base": {"task_accuracy": 0.5}}}',))
        db.commit()
    store = ResultStore(path)
    metrics = {"eval": {"base": {"task_accuracy": 0.5}, "trained": {}}, "diverged": {"step": 8, "loss": 1.2e5}}
    assert store.record_result("b", metrics, 2.0) == "diverged"
    assert store.statuses() == {"a": "done", "b": "diverged"}
    results = {r.config_hash: r for r in store.results()}
    assert results["a"].diverged is None and results["a"].base == {"task_accuracy": 0.5}
    assert results["b"].diverged == {"step": 8, "loss": 1.2e5} and results["b"].trained == {}
    assert store.requeue(failed=True) == 0  # a diverged cell is a result: never put back to run


def test_a_database_from_before_slurm_jobs_gains_their_table_and_keeps_its_cells(tmp_path):
    old_schema = store_module.SCHEMA[:store_module.SCHEMA.index("-- Slurm jobs")] + \
        store_module.SCHEMA[store_module.SCHEMA.index("CREATE TABLE IF NOT EXISTS results"):]
    path = tmp_path / "results.sqlite"
    with closing(sqlite3.connect(path)) as db:
        db.executescript(old_schema)
        db.execute("INSERT INTO cells (config_hash, model, recipe, variant, seed, overrides, status, attempts) "
                   "VALUES ('a', 'm', 'sft', 'default', 0, '{}', 'failed', 1), ('b', 'm', 'sft', 'x', 0, '{}', 'pending', 0)")
        db.commit()
    assert "jobs" not in tables(path)
    store = ResultStore(path)
    assert "jobs" in tables(path)
    assert [(c["config_hash"], c["status"], c["job_id"]) for c in store.cells()] == [("a", "failed", None),
                                                                                     ("b", "pending", None)]


def test_a_submission_is_recorded_before_its_job_ids_and_a_running_job_stays_running(tmp_path):
    """The rows exist before sbatch answers (a coordinator killed in between finds them by name), each attempt
    is its own job, and requeue leaves the cells whose jobs still run alone."""
    store = ResultStore(tmp_path / "results.sqlite")
    with closing(sqlite3.connect(store.path)) as db:
        db.executemany("INSERT INTO cells (config_hash, model, recipe, variant, seed, overrides) VALUES (?, 'm', 'sft', "
                       "'default', 0, '{}')", [("a",), ("b",)])
        db.commit()
    store.mark_submitting(["a", "b"], "batch-1", "/study/slurm/%j")
    assert [(j["config_hash"], j["batch_index"], j["job_id"], j["attempt"]) for j in store.jobs(running_only=True)] == \
        [("a", 0, None, 1), ("b", 1, None, 1)]
    store.record_job_ids("batch-1", ["7_0", "7_1"])
    assert {c["config_hash"]: (c["status"], c["job_id"]) for c in store.cells()} == {"a": ("running", "7_0"),
                                                                                     "b": ("running", "7_1")}
    assert store.requeue(keep={"a"}) == 1 and store.statuses() == {"a": "running", "b": "pending"}
    store.mark_submitting(["b"], "batch-2", "/study/slurm/%j")
    store.record_job_ids("batch-2", ["8"])
    assert store.submissions() == 3 and {j["config_hash"]: j["job_id"] for j in store.jobs()} == {"a": "7_0", "b": "8"}


def test_results_of_old_proxy_and_best_of_n_cells_read_as_their_kinds(tmp_path):
    """Metrics stored before cells had kinds marked them by a "proxy" or "best_of_n" key and a recipe suffix."""
    from align_proxy.cells.params import BestOfNParams, ProxyTuneParams

    proxy = {"recipe": "sft (proxy-tuned)", "eval": {"base": {"task_accuracy": 0.2}, "trained": {"task_accuracy": 0.3}},
             "proxy": {"recipe": "sft", "variant": "default", "small": "ladder-s", "alpha": 1.0, "expert": "/x"}}
    best = {"recipe": "best-of-n", "train": {"curve": [{"n": 1}]},
            "best_of_n": {"policy": "ladder-s", "reward_model": "/rm", "gold": "arith_exact_match", "task": "arith",
                          "n": 8, "prompts": 4, "temperature": 1.0, "max_new_tokens": 8, "distinct_per_prompt": 3.5}}
    path = tmp_path / "results.sqlite"
    store = ResultStore(path)
    with closing(sqlite3.connect(path)) as db:  # rows as an old study wrote them, not as record_result does now
        db.execute("INSERT INTO cells (config_hash, model, recipe, variant, seed, overrides, status) VALUES "
                   "('p', 'ladder-m', 'sft (proxy-tuned)', 'default, from ladder-s, alpha=1', 0, '{}', 'done'), "
                   "('b', 'ladder-s', 'reward (best-of-n)', 'default', 0, '{}', 'done'), "
                   "('t', 'ladder-s', 'sft', 'default', 0, '{}', 'done')")
        db.executemany("INSERT INTO results VALUES (?, 1.0, ?)", [
            ("p", json.dumps(proxy)), ("b", json.dumps(best)), ("t", '{"eval": {"base": {"task_accuracy": 0.1}}}')])
        db.commit()
    results = {r.config_hash: r for r in store.results()}
    assert (results["p"].kind, results["p"].recipe) == ("proxy-tuning", "sft (proxy-tuned)")
    assert results["p"].params == ProxyTuneParams("sft", "default", "ladder-s", 1.0, "/x")
    assert (results["b"].kind, results["b"].recipe) == ("best-of-n", "reward (best-of-n)")
    assert results["b"].curve == [{"n": 1}]
    assert results["b"].params == BestOfNParams(8, 4, "arith_exact_match", 1.0, 8, "arith", "ladder-s",
                                                reward_model="/rm", distinct_per_prompt=3.5)
    assert (results["t"].kind, results["t"].params) == ("train", None)
