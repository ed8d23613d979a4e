"""The study runner: cells run through the recipe scripts in their own processes, results land in the
SQLite store exactly once, and a study killed with SIGKILL resumes without re-running finished cells."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest
import yaml

from conftest import REPO

pytestmark = pytest.mark.slow

# A small SFT config: the ladder config's settings with fewer examples, so a cell takes ~2 s.
CONFIG = dict(yaml.safe_load((REPO / "recipes/configs/sft_ladder_cpu.yaml").read_text()),
              builtin_train_size=256, builtin_test_size=40, eval_size=40, per_device_train_batch_size=32,
              logging_steps=2)


def write_spec(tmp_path: Path, models: list[str], grid: dict, seeds: list[int], name: str) -> Path:
    config = tmp_path / "sft_tiny.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    spec = {"name": name, "output_dir": str(tmp_path / name), "models": models, "seeds": seeds,
            "recipes": [{"recipe": "sft", "config": str(config), "grid": grid}]}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def study(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "align_proxy.cli", "study", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=600, **kwargs)


def rows(db: Path, sql: str) -> list[tuple]:
    with closing(sqlite3.connect(db)) as conn:  # sqlite3's own context manager commits but never closes
        return conn.execute(sql).fetchall()


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
def killed_and_resumed(tiny_ladder, tmp_path_factory):
    """Run a 2-model x 2-variant x 2-seed study, SIGKILL it mid-cell, then run it again to the end."""
    tmp_path = tmp_path_factory.mktemp("study")
    spec = write_spec(tmp_path, [r.path for r in tiny_ladder], {"learning_rate": [1e-3, 3e-4]}, [0, 1], "killed")
    db = tmp_path / "killed" / "results.sqlite"
    runner = subprocess.Popen([sys.executable, "-m", "align_proxy.cli", "study", str(spec), "--jobs", "1",
                               "--no-report"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:  # wait until two cells are done and a third is running
            if db.exists():
                # Only the runner writes the store: stopped, it cannot move on between this look and the kill.
                os.kill(runner.pid, signal.SIGSTOP)
                status = dict(rows(db, "SELECT status, COUNT(*) FROM cells GROUP BY status"))
                if status.get("done", 0) >= 2 and status.get("running", 0) == 1:
                    break
                os.kill(runner.pid, signal.SIGCONT)
            assert runner.poll() is None, "the study finished before it could be killed"
            time.sleep(0.1)
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
    resumed = study(str(spec), "--jobs", "2", "--no-report")
    return {"db": db, "spec": spec, "before": before, "results_before": results_before, "resumed": resumed,
            "orphans_gone": orphans_gone, "study_dir": tmp_path / "killed", "finished_unrecorded": finished_unrecorded}


def _wait_gone(pids: set[int], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(Path(f"/proc/{pid}").exists() for pid in pids):
            return True
        time.sleep(0.1)
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


def test_each_cell_ran_its_own_overrides_through_the_recipe(killed_and_resumed):
    db, study_dir = killed_and_resumed["db"], killed_and_resumed["study_dir"]
    for config_hash, variant, seed in rows(db, "SELECT config_hash, variant, seed FROM cells"):
        resolved = yaml.safe_load((study_dir / "cells" / config_hash / "run_config.yaml").read_text())
        assert f"learning_rate={resolved['training_args']['learning_rate']}" == variant
        assert resolved["training_args"]["seed"] == seed
        assert resolved["training_args"]["output_dir"] == str(study_dir / "cells" / config_hash)


def test_base_model_is_evaluated_once_per_model_and_shared(killed_and_resumed):
    db, study_dir = killed_and_resumed["db"], killed_and_resumed["study_dir"]
    assert len(list((study_dir / "base_evals").glob("*.json"))) == 2  # two models, one evaluation each
    base_by_model = {}
    for model, metrics in rows(db, "SELECT c.model, r.metrics FROM cells c JOIN results r USING (config_hash)"):
        base = json.loads(metrics)["eval"]["items"]["base"]
        assert base_by_model.setdefault(model, base) == base  # same items, same scores, every cell


def test_report_of_a_finished_study(killed_and_resumed):
    study_dir = killed_and_resumed["study_dir"]
    result = subprocess.run([sys.executable, "-m", "align_proxy.cli", "report", str(study_dir)], capture_output=True,
                            text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert {"report.html", "report.md", "report.json"} <= {p.name for p in study_dir.iterdir()}
    analysis = json.loads((study_dir / "report.json").read_text())
    assert analysis  # the numbers themselves are pinned by test_analysis on planted results


def test_failed_cells_keep_their_error_and_rerun_only_on_request(tiny_ladder, tmp_path):
    # max_length 2 cannot hold any prompt: the recipe's data check fails in every cell, before training.
    spec = write_spec(tmp_path, [r.path for r in tiny_ladder], {"max_length": [2]}, [0], "failing")
    db = tmp_path / "failing" / "results.sqlite"
    first = study(str(spec), "--no-report")
    assert first.returncode == 1 and "0/2 cells done" in first.stdout and "2 failed" in first.stdout
    errors = rows(db, "SELECT status, attempts, error FROM cells")
    assert all(status == "failed" and attempts == 1 and "max_length" in error for status, attempts, error in errors)
    assert study(str(spec), "--no-report").returncode == 1
    assert {row[0] for row in rows(db, "SELECT attempts FROM cells")} == {1}  # not retried unasked
    study(str(spec), "--no-report", "--retry-failed")
    assert {row[0] for row in rows(db, "SELECT attempts FROM cells")} == {2}


def test_malformed_spec_stops_before_anything_runs(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text(f"name: bad\noutput_dir: {tmp_path / 'out'}\nmodels: [ladder-s]\nrecipes: [{{recipe: sft}}]\n")
    result = study(str(spec))
    assert result.returncode == 2 and "at least two model sizes" in result.stdout and str(spec) in result.stdout
    assert not (tmp_path / "out").exists()


def test_each_running_cell_is_pinned_to_its_own_gpu(tiny_ladder, tmp_path, monkeypatch):
    """Two GPUs, two jobs: the two cells run at once, one on each card (faked here: on a machine without CUDA
    the variable is set and ignored, which is all this checks)."""
    from align_proxy.studies import runner
    from align_proxy.studies.spec import load_spec

    monkeypatch.setattr(runner, "visible_gpus", lambda: ["3", "5"])
    spec = load_spec(write_spec(tmp_path, [r.path for r in tiny_ladder], {}, [0], "pinned"))
    outcome = runner.run_study(spec, progress=False, report=False)  # --jobs by default: one per GPU
    assert outcome.done == 2
    cells = sorted((tmp_path / "pinned" / "cells").iterdir())
    pinned = {(cell / "command.txt").read_text().split()[0] for cell in cells}
    assert pinned == {"CUDA_VISIBLE_DEVICES=3", "CUDA_VISIBLE_DEVICES=5"}
    for cell in cells:
        gpu = (cell / "command.txt").read_text().split()[0].split("=")[1]
        assert f"cell on GPU {gpu}" in (cell / "cell.log").read_text()


@pytest.mark.distributed
def test_cells_of_a_launched_recipe_run_under_deepspeed(tiny_ladder, tmp_path):
    """`launch` in a recipe entry: each cell is an `accelerate launch` of two DeepSpeed ZeRO-2 processes."""
    spec = yaml.safe_load(write_spec(tmp_path, [r.path for r in tiny_ladder], {}, [0], "launched").read_text())
    spec["recipes"][0]["launch"] = {"config_file": "recipes/accelerate/deepspeed_cpu.yaml"}  # its num_processes: 2
    path = tmp_path / "launched.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = study(str(path), "--jobs", "1", "--no-report")
    assert result.returncode == 0, result.stdout + result.stderr
    cells = sorted((tmp_path / "launched" / "cells").iterdir())
    assert len(cells) == 2
    for cell in cells:
        assert (cell / "command.txt").read_text().startswith("accelerate launch --config_file ")
        distributed = json.loads((cell / "metrics.json").read_text())["train"]["distributed"]
        assert distributed["num_processes"] == 2 and distributed["engine"] == "DeepSpeedEngine"
    assert {row[0] for row in rows(tmp_path / "launched" / "results.sqlite", "SELECT status FROM cells")} == {"done"}


GRPO_TINY = dict(yaml.safe_load((REPO / "recipes/configs/grpo_ladder_cpu.yaml").read_text()),
                 max_steps=3, per_device_train_batch_size=16, num_generations=4, builtin_train_size=64,
                 logging_steps=1, warmup_steps=0, eval_num_samples=2)


def write_chain_spec(tmp_path: Path, models: list[str], sft_grid: dict, name: str) -> Path:
    """SFT on each model, then GRPO from each SFT cell's model: the order an RLHF recipe runs in."""
    (tmp_path / "grpo_tiny.yaml").write_text(yaml.safe_dump(GRPO_TINY))
    spec = yaml.safe_load(write_spec(tmp_path, models, sft_grid, [0], name).read_text())
    spec["evaluation"] = {"eval_size": 16, "builtin_test_size": 32}  # both recipes score the same items
    spec["recipes"].append({"recipe": "grpo", "config": str(tmp_path / "grpo_tiny.yaml"), "start_from": "sft"})
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_a_recipe_started_from_another_trains_the_model_that_cell_trained(tiny_ladder, tmp_path):
    spec = write_chain_spec(tmp_path, [r.path for r in tiny_ladder], {}, "chain")
    result = study(str(spec), "--jobs", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    # The report says what a started recipe's gain is measured from.
    assert "grpo (from sft): " in result.stdout and "gains are over the model sft (default) trained" in result.stdout
    assert "**grpo (from sft)**" in (tmp_path / "chain" / "report.md").read_text()
    db = tmp_path / "chain" / "results.sqlite"
    cells = {(recipe, model): config_hash for config_hash, recipe, model in
             rows(db, "SELECT config_hash, recipe, model FROM cells WHERE status = 'done'")}
    assert len(cells) == 4
    for model in {model for _, model in cells}:
        sft, grpo = cells["sft", model], cells["grpo", model]
        command = (tmp_path / "chain" / "cells" / grpo / "command.txt").read_text().split()
        assert command[command.index("--model_name_or_path") + 1] == str(tmp_path / "chain" / "cells" / sft)
        trained_by_sft = json.loads((tmp_path / "chain" / "cells" / sft / "metrics.json").read_text())["eval"]
        grpo_base = json.loads((tmp_path / "chain" / "cells" / grpo / "metrics.json").read_text())["eval"]
        # GRPO's starting point is the SFT cell's trained model, item for item, not the rung it began from.
        assert grpo_base["items"]["base"]["task_accuracy"] == trained_by_sft["items"]["trained"]["task_accuracy"]


def test_cells_whose_start_cell_failed_are_failed_without_running(tiny_ladder, tmp_path):
    spec = write_chain_spec(tmp_path, [r.path for r in tiny_ladder], {"max_length": [2]}, "stranded")
    result = study(str(spec), "--no-report")
    assert result.returncode == 1
    failed = rows(tmp_path / "stranded" / "results.sqlite", "SELECT recipe, status, attempts, error FROM cells")
    assert {(recipe, status) for recipe, status, _, _ in failed} == {("sft", "failed"), ("grpo", "failed")}
    for recipe, _, attempts, error in failed:
        if recipe == "grpo":
            assert attempts == 0 and "not run: the cell it starts from" in error and "--retry-failed" in error
