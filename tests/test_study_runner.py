"""The study runner: cells run through their recipe scripts in their own processes, results land in the SQLite
store exactly once, a study killed with SIGKILL resumes without re-running finished cells, and a diverged cell is
a result. Scheduling is tested on fake cells (tests/fake_recipe.py) that finish in milliseconds; one study on the
tiny ladder trains real cells, one of which diverges."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from support import FAKE_STUDY, REPO, rows, write_spec
from fake_recipe import FAKE

def study(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*FAKE_STUDY, "study", *args], capture_output=True, text=True, cwd=REPO, timeout=600)


def descendants(pid: int) -> set[int]:
    """Every process below `pid`, read from /proc (the cells run under the forkserver)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory):
    """Run a 2-model x 2-variant x 2-seed study of fake cells, SIGKILL it mid-cell, then run it again to the end."""
    tmp_path = tmp_path_factory.mktemp("study")
    spec = write_spec(tmp_path, "killed", {"learning_rate": [1e-3, 3e-4]}, [0, 1], seconds=0.5)
    db = tmp_path / "killed" / "results.sqlite"
    runner = subprocess.Popen([*FAKE_STUDY, "study", str(spec), "--jobs", "1", "--no-report"], cwd=REPO,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:  # wait until two cells are done and a third is running
            if db.exists():
                # Only the runner writes the store: stopped, it cannot move on between this look and the kill.
                os.kill(runner.pid, signal.SIGSTOP)
                try:
                    status = dict(rows(db, "SELECT status, COUNT(*) FROM cells GROUP BY status", timeout=0.2))
                except sqlite3.OperationalError:  # stopped inside a write transaction: let it finish, look again
                    status = {}
                if status.get("done", 0) >= 2 and status.get("running", 0) == 1:
                    break
                os.kill(runner.pid, signal.SIGCONT)
            assert runner.poll() is None, "the study finished before it could be killed"
            time.sleep(0.05)  # polling the store of a study in another process
        else:
            pytest.fail("the study never reached two finished cells")
        cells_below = descendants(runner.pid)
        os.kill(runner.pid, signal.SIGKILL)
        runner.wait()
    finally:
        runner.kill()
    before = {row[0]: row[1:] for row in rows(db, "SELECT config_hash, status, attempts, finished_at FROM cells")}
    results_before = dict(rows(db, "SELECT config_hash, metrics FROM results"))
    orphans_gone = _wait_gone(cells_below)
    # The interrupted cell may have written metrics.json just before the kill reached it: then it is
    # finished, and the rerun must record it rather than run it again.
    interrupted = [h for h, (status, *_) in before.items() if status == "running"]
    finished_unrecorded = {h for h in interrupted if (tmp_path / "killed" / "cells" / h / "metrics.json").exists()}
    resumed = study(str(spec), "--jobs", "2")
    return {"db": db, "spec": spec, "before": before, "results_before": results_before, "resumed": resumed,
            "orphans_gone": orphans_gone, "study_dir": tmp_path / "killed", "finished_unrecorded": finished_unrecorded}


def _alive(pid: int) -> bool:
    """Running, not a zombie: a dead process stays in /proc until reaped, and an orphan's reaper is init, which in
    a container may never reap it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_gone(pids: set[int], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(_alive(pid) for pid in pids):
            return True
        time.sleep(0.1)  # polling /proc for processes of another process tree
    return False


def test_a_killed_study_takes_its_running_cells_with_it(killed_and_resumed):
    assert killed_and_resumed["orphans_gone"]
    statuses = [row[0] for row in killed_and_resumed["before"].values()]
    assert statuses.count("running") == 1 and statuses.count("done") >= 2


def test_resumed_study_ends_with_exactly_one_result_per_cell(killed_and_resumed):
    resumed, db = killed_and_resumed["resumed"], killed_and_resumed["db"]
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    cells = rows(db, "SELECT config_hash, status FROM cells")
    assert len(cells) == 8 and {status for _, status in cells} == {"done"}
    counts = rows(db, "SELECT c.config_hash, COUNT(r.config_hash) FROM cells c "
                      "LEFT JOIN results r USING (config_hash) GROUP BY c.config_hash")
    assert all(count == 1 for _, count in counts)


def test_resumed_study_does_not_rerun_finished_cells(killed_and_resumed):
    db, before = killed_and_resumed["db"], killed_and_resumed["before"]
    after = {row[0]: row[1:] for row in rows(db, "SELECT config_hash, status, attempts, finished_at FROM cells")}
    results_after = dict(rows(db, "SELECT config_hash, metrics FROM results"))
    for config_hash, (status, attempts, finished_at) in before.items():
        if status == "done":
            assert after[config_hash] == (status, attempts, finished_at)  # untouched: not run again
            assert results_after[config_hash] == killed_and_resumed["results_before"][config_hash]
        if status == "running":  # the cell the kill interrupted: run once more, unless it had finished
            recovered = config_hash in killed_and_resumed["finished_unrecorded"]
            assert after[config_hash][1] == (attempts if recovered else attempts + 1)


def test_each_cell_ran_its_own_overrides_through_its_script(killed_and_resumed):
    db, study_dir = killed_and_resumed["db"], killed_and_resumed["study_dir"]
    for config_hash, variant, seed in rows(db, "SELECT config_hash, variant, seed FROM cells"):
        resolved = yaml.safe_load((study_dir / "cells" / config_hash / "run_config.yaml").read_text())
        assert f"learning_rate={resolved['training_args']['learning_rate']}" == variant
        assert resolved["training_args"]["seed"] == seed
        assert resolved["training_args"]["output_dir"] == str(study_dir / "cells" / config_hash)
        command = (study_dir / "cells" / config_hash / "command.txt").read_text().split()
        assert command[:2] == ["python", FAKE.script] and "--base_eval_cache" in command


def test_every_cell_of_a_model_shares_one_base_evaluation(killed_and_resumed):
    db, study_dir = killed_and_resumed["db"], killed_and_resumed["study_dir"]
    assert len(list((study_dir / "base_evals").glob("*.json"))) == 2  # two models, one evaluation each
    base_by_model = {}
    for model, metrics in rows(db, "SELECT c.model, r.metrics FROM cells c JOIN results r USING (config_hash)"):
        base = json.loads(metrics)["eval"]["items"]["base"]
        assert base_by_model.setdefault(model, base) == base  # same items, same scores, every cell


def test_a_finished_study_writes_its_report(killed_and_resumed):
    resumed, study_dir = killed_and_resumed["resumed"], killed_and_resumed["study_dir"]
    assert {"report.html", "report.md", "report.json"} <= {p.name for p in study_dir.iterdir()}
    assert "8/8 cells done" in resumed.stdout and f"report: {study_dir / 'report.html'}" in resumed.stdout
    markdown = (study_dir / "report.md").read_text()
    assert "fake" in markdown and "fake-s" in markdown and "fake-l" in markdown


def in_process_study(capsys, *args: str) -> tuple[int, str]:
    """`align-proxy study ...` run in this process (the fake kind registered): exit code and what it printed.
    The subprocess form (`study`) is kept for what needs a process to kill; this one skips its imports."""
    from align_proxy.cli import main

    capsys.readouterr()
    code = main(["study", *args])
    return code, capsys.readouterr().out


def test_failed_cells_keep_their_error_and_rerun_only_on_request(fake_kind, tmp_path, capsys):
    spec = write_spec(tmp_path, "failing", {"max_length": [2]}, [0])
    db = tmp_path / "failing" / "results.sqlite"
    code, out = in_process_study(capsys, str(spec), "--no-report")
    assert code == 1 and "0/2 cells done" in out and "2 failed" in out
    errors = rows(db, "SELECT status, attempts, error FROM cells")
    assert all(status == "failed" and attempts == 1 for status, attempts, _ in errors)
    # The recorded error leads with the cause the cell's log ends on, which --status shows.
    assert all("error: " in error.splitlines()[0] and "max_length 2" in error.splitlines()[0] for *_, error in errors)
    status = in_process_study(capsys, str(spec), "--status")[1]
    error_column = " ".join(line.split("│")[-2].strip() for line in status.splitlines() if line.startswith("│"))
    assert "longer than max_length 2" in error_column  # read down its column: it wraps to fit 120 columns
    assert in_process_study(capsys, str(spec), "--no-report")[0] == 1
    assert {row[0] for row in rows(db, "SELECT attempts FROM cells")} == {1}  # not retried unasked
    in_process_study(capsys, str(spec), "--no-report", "--retry-failed")
    assert {row[0] for row in rows(db, "SELECT attempts FROM cells")} == {2}


def test_the_report_of_a_partial_study_names_each_failed_cells_cause(fake_kind, tmp_path, capsys):
    spec = write_spec(tmp_path, "halfway", {"max_length": [2, 64]}, [0])
    code, out = in_process_study(capsys, str(spec))
    assert code == 1 and "2/4 cells done" in out, out
    report = (tmp_path / "halfway" / "report.md").read_text()
    assert "Partial study: 2 of 4 cells are not finished" in report, report
    assert report.count("(failed: exit code 2: error: ") == 2 and "longer than max_length 2" in report, report


def test_a_diverged_cell_is_a_result_never_retried_or_rerun(fake_kind, tmp_path, capsys):
    spec = write_spec(tmp_path, "diverging", {"learning_rate": [1e-3, 100]}, [0])
    code, out = in_process_study(capsys, str(spec), "--no-report")
    assert code == 0, out
    assert "2/4 cells done" in out and "0 failed, 2 diverged" in out
    db = tmp_path / "diverging" / "results.sqlite"
    statuses = dict(rows(db, "SELECT variant, status FROM cells GROUP BY variant"))
    assert statuses == {"learning_rate=0.001": "done", "learning_rate=100": "diverged"}
    for retry in ((), ("--retry-failed",)):
        assert in_process_study(capsys, str(spec), "--no-report", *retry)[0] == 0
    assert {row[0] for row in rows(db, "SELECT attempts FROM cells")} == {1}  # neither rerun nor retried
    code, status = in_process_study(capsys, str(spec), "--status")
    assert status.count("│ diverged ") == 2, status  # the status column of each diverged cell


def test_the_store_returns_a_diverged_cell_with_its_base_scores_and_divergence(fake_kind, tmp_path):
    from align_proxy.studies import runner
    from align_proxy.studies.spec import load_spec
    from align_proxy.studies.store import ResultStore

    spec = load_spec(write_spec(tmp_path, "diverged", {"learning_rate": [100]}, [0]))
    outcome = runner.run_study(spec, progress=False, report=False)
    assert (outcome.done, outcome.diverged, outcome.failed) == (0, 2, 0)
    results = ResultStore(tmp_path / "diverged" / "results.sqlite").results()
    assert len(results) == 2
    for result in results:
        assert result.diverged == {"step": 2, "loss": 1e6}
        assert len(result.items_base["task_accuracy"]) == 8 and result.trained == {} and result.items_trained == {}


def test_malformed_spec_stops_before_anything_runs(tmp_path, capsys):
    spec = tmp_path / "bad.yaml"
    spec.write_text(f"name: bad\noutput_dir: {tmp_path / 'out'}\nmodels: [ladder-s]\nrecipes: [{{recipe: sft}}]\n")
    code, out = in_process_study(capsys, str(spec))
    assert code == 2 and "at least two model sizes" in out and str(spec) in out
    assert not (tmp_path / "out").exists()


def test_each_running_cell_is_pinned_to_its_own_gpu(fake_kind, tmp_path, monkeypatch):
    """Two GPUs, two jobs: the two cells run at once, one on each card (faked here: on a machine without CUDA
    the variable is set and ignored, which is all this checks)."""
    from align_proxy.studies import runner
    from align_proxy.studies.spec import load_spec

    monkeypatch.setattr(runner, "visible_gpus", lambda: ["3", "5"])
    spec = load_spec(write_spec(tmp_path, "pinned", {}, [0]))
    outcome = runner.run_study(spec, progress=False, report=False)  # --jobs by default: one per GPU
    assert outcome.done == 2
    cells = sorted((tmp_path / "pinned" / "cells").iterdir())
    pinned = {(cell / "command.txt").read_text().split()[0] for cell in cells}
    assert pinned == {"CUDA_VISIBLE_DEVICES=3", "CUDA_VISIBLE_DEVICES=5"}
    for cell in cells:
        gpu = (cell / "command.txt").read_text().split()[0].split("=")[1]
        assert f"cell on GPU {gpu}" in (cell / "cell.log").read_text()


def chain_spec(tmp_path: Path, name: str, first_grid: dict) -> Path:
    """A fake recipe, then a second fake kind started from each of its cells: the order an RLHF study runs in."""
    second = tmp_path / f"{name}-second.yaml"
    second.write_text(yaml.safe_dump({"seconds": 0.0}))
    return write_spec(tmp_path, name, first_grid, [0], recipes=[
        {"recipe": "fake2", "config": str(second), "start_from": "fake"}])


@pytest.fixture
def two_fake_kinds(fake_kind, monkeypatch):
    from dataclasses import replace

    from align_proxy import kinds

    monkeypatch.setitem(kinds.KINDS, "fake2", replace(FAKE, name="fake2"))


def test_a_recipe_started_from_another_starts_from_the_model_that_cell_trained(two_fake_kinds, tmp_path):
    from align_proxy.studies import runner
    from align_proxy.studies.spec import load_spec

    outcome = runner.run_study(load_spec(chain_spec(tmp_path, "chain", {})), jobs=2, progress=False, report=False)
    assert (outcome.done, outcome.failed) == (4, 0)
    db = tmp_path / "chain" / "results.sqlite"
    cells = {(recipe, model): config_hash for config_hash, recipe, model in
             rows(db, "SELECT config_hash, recipe, model FROM cells WHERE status = 'done'")}
    for model in {model for _, model in cells}:
        first, second = cells["fake", model], cells["fake2", model]
        command = (tmp_path / "chain" / "cells" / second / "command.txt").read_text().split()
        assert command[command.index("--model_name_or_path") + 1] == str(tmp_path / "chain" / "cells" / first)


@pytest.mark.parametrize("grid, why", [({"max_length": [2]}, "failed"), ({"learning_rate": [100]}, "diverged")])
def test_cells_whose_start_cell_left_no_model_are_failed_without_running(two_fake_kinds, tmp_path, grid, why):
    from align_proxy.studies import runner
    from align_proxy.studies.spec import load_spec

    runner.run_study(load_spec(chain_spec(tmp_path, "stranded", grid)), progress=False, report=False)
    cells = rows(tmp_path / "stranded" / "results.sqlite", "SELECT recipe, status, attempts, error FROM cells")
    assert {(recipe, status) for recipe, status, _, _ in cells} == {("fake", why), ("fake2", "failed")}
    for recipe, _, attempts, error in cells:
        if recipe == "fake2":
            assert attempts == 0 and "not run: the cell it starts from" in error and why in error


# --- real cells: the recipes themselves, through the runner ------------------------------------------------------

SFT_TINY = dict(yaml.safe_load((REPO / "recipes/configs/sft_ladder_cpu.yaml").read_text()),
                builtin_train_size=128, builtin_test_size=24, eval_size=24, per_device_train_batch_size=32,
                logging_steps=1, max_steps=4)


@pytest.mark.slow
def test_a_study_of_real_cells_records_a_diverging_variant_as_diverged(tiny_ladder, tmp_path):
    spec = write_spec(tmp_path, "real", {"learning_rate": [1e-3, 100]}, [0], recipe="sft", config=SFT_TINY,
                      models=[r.path for r in tiny_ladder])
    # No report: a diverged variant's report is test_report.py's (from stored results, without training).
    result = subprocess.run([sys.executable, "-m", "align_proxy.cli", "study", str(spec), "--jobs", "2", "--no-report"],
                            capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    db = tmp_path / "real" / "results.sqlite"
    assert dict(rows(db, "SELECT variant, status FROM cells GROUP BY variant")) == \
        {"learning_rate=0.001": "done", "learning_rate=100": "diverged"}
    for config_hash, status in rows(db, "SELECT config_hash, status FROM cells"):
        log = (tmp_path / "real" / "cells" / config_hash / "cell.log").read_text()
        assert "Traceback" not in log
        assert ("training diverged at step" in log) == (status == "diverged")
    # Real recipes share one base evaluation per model through the cache, item for item.
    assert len(list((tmp_path / "real" / "base_evals").glob("policy-*.json"))) == 2
    base_by_model = {}
    for model, metrics in rows(db, "SELECT c.model, r.metrics FROM cells c JOIN results r USING (config_hash)"):
        assert base_by_model.setdefault(model, json.loads(metrics)["eval"]["items"]["base"]) == \
            json.loads(metrics)["eval"]["items"]["base"]
