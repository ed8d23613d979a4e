"""A judged study: its spec's `evaluation: {judge, num_samples}` reaches the cells whose replies a judge scores, its
headline is judged on a judged metric, report.json names the judge, and a study killed mid-way and rerun judges no
finished cell again."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from align_proxy.studies.spec import StudySpecError, load_spec
from support import REPO, rows

JUDGE = "tests.support:logged_exact_match"


def _spec(tmp_path: Path, models: list[str], evaluation: dict, recipes: list[dict] | None = None) -> Path:
    config = dict(yaml.safe_load((REPO / "recipes/configs/sft_ladder_cpu.yaml").read_text()),
                  builtin_train_size=128, builtin_test_size=8, eval_size=8, max_steps=4, logging_steps=1)
    (tmp_path / "sft.yaml").write_text(yaml.safe_dump(config))
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "judged", "output_dir": str(tmp_path / "study"), "seeds": [0], "models": models,
        "evaluation": evaluation,
        "recipes": recipes or [{"recipe": "sft", "config": str(tmp_path / "sft.yaml"),
                                "metric": "win_rate_vs_reference"}]}))
    return spec


def test_the_judge_reaches_only_the_recipes_whose_replies_it_judges(tmp_path):
    spec = load_spec(_spec(tmp_path, ["ladder-s", "ladder-m"], {"judge": "arith_exact_match", "num_samples": 3},
                           [{"recipe": "sft"}, {"recipe": "grpo", "metric": "judge_reward"}, {"recipe": "reward"}]))
    assert spec.evaluation == {"eval_judge": ["arith_exact_match"], "eval_num_samples": 3}
    for judged in ("sft", "grpo"):  # an RL recipe's judge scores its own samples
        assert spec.evaluation_for(judged) == {"eval_judge": ["arith_exact_match"], "eval_num_samples": 3}
    assert spec.evaluation_for("reward") == {"eval_num_samples": 3}  # a reward model writes nothing to judge
    assert spec.judge == {"judge": ["arith_exact_match"], "weights": None, "num_samples": 3}


@pytest.mark.parametrize("evaluation, recipes, message", [
    ({"judge": "no_such_reward"}, None, r"evaluation.judge: unknown reward 'no_such_reward'"),
    ({"judge": "arith_exact_match", "eval_judge": "arith_exact_match"}, None, "set the same flag; keep one"),
    ({"judge": ["arith_exact_match"], "judge_weights": [1, 2]}, None, "one number per judge"),
    ({}, None, "the spec names no judge: add evaluation: {judge: SPEC}"),
    ({"judge": "arith_exact_match"}, [{"recipe": "grpo", "metric": "win_rate_vs_base"}],
     "the grpo recipe's judge gives judge_reward"),
    ({"judge": "arith_exact_match"}, [{"recipe": "sft"}, {"recipe": "reward", "metric": "judge_reward"}],
     "the reward recipe's judge gives nothing"),
    ({"judge": "arith_exact_match"}, [{"recipe": "reward"}], "no listed recipe writes replies to judge"),
])
def test_a_judged_spec_error_names_the_key_and_the_fix(tmp_path, evaluation, recipes, message):
    with pytest.raises(StudySpecError, match=message):
        load_spec(_spec(tmp_path, ["ladder-s", "ladder-m"], evaluation, recipes))


def _judged_runs(log: Path) -> Counter:
    """How many replies the judge scored, per run directory (base and trained evaluations alike)."""
    counts = Counter()
    for line in log.read_text().splitlines() if log.exists() else []:
        run, n = line.rsplit(" ", 1)
        counts[run] += int(n)
    return counts


@pytest.mark.slow  # two tiny SFT cells, judged, run twice around a kill: ~40 s
def test_a_killed_judged_study_rerun_judges_no_finished_cell_again(tiny_ladder, tmp_path):
    spec = _spec(tmp_path, [r.path for r in tiny_ladder], {"judge": JUDGE, "num_samples": 2})
    log, db = tmp_path / "judge.log", tmp_path / "study" / "results.sqlite"
    env = {**os.environ, "JUDGE_LOG": str(log)}
    command = [sys.executable, "-m", "align_proxy.cli", "study", str(spec), "--jobs", "1"]
    runner = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:  # one cell finished and the other running: kill the study there
            try:  # the store may not have its tables yet, or be mid-write: look again
                status = dict(rows(db, "SELECT status, COUNT(*) FROM cells GROUP BY status", timeout=0.2)
                              if db.exists() else [])
            except sqlite3.OperationalError:
                status = {}
            if status.get("done") == 1 and status.get("running") == 1:
                break
            assert runner.poll() is None, "the study finished before it could be killed"
            time.sleep(0.1)  # polling the store of a study in another process
        else:
            pytest.fail("the study never had one finished cell and one running")
        os.kill(runner.pid, signal.SIGKILL)
        runner.wait()
    finally:
        runner.kill()
    (finished,) = [h for (h,) in rows(db, "SELECT config_hash FROM cells WHERE status = 'done'")]
    finished_dir = str(tmp_path / "study" / "cells" / finished)
    before = _judged_runs(log)
    assert before[finished_dir] > 0

    rerun = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    after = _judged_runs(log)
    assert after[finished_dir] == before[finished_dir]  # the finished cell was neither rerun nor judged again
    assert sum(after.values()) > sum(before.values())  # the interrupted one was
    report = json.loads((tmp_path / "study" / "report.json").read_text())
    (sft,) = [h for h in report["headline"] if h["recipe"] == "sft"]
    assert sft["metric"] == "win_rate_vs_reference"
    (judge,) = report["judge"]["judges"]
    support = REPO / "tests" / "support.py"
    assert judge["spec"] == JUDGE and judge["path"] == str(support.resolve())
    assert judge["sha256"] == hashlib.sha256(b"support.py" + support.read_bytes()).hexdigest()
    assert "Judge of the judged metrics" in (tmp_path / "study" / "report.md").read_text()


def test_the_shipped_judged_study_judges_sft_and_dpo_from_it_on_every_rung():
    spec = load_spec(REPO / "align_proxy/studies/judged.yaml")
    assert spec.models == ["ladder-s", "ladder-m", "ladder-l"]
    assert {p.recipe: p.metric for p in spec.recipes} == {"sft": "judge_reward", "dpo": "win_rate_vs_reference"}
    (dpo,) = [p for p in spec.recipes if p.recipe == "dpo"]
    assert dpo.start_from["recipe"] == "sft"
    assert spec.judge == {"judge": ["arith_exact_match"], "weights": None, "num_samples": 4}


def _cell_judged_spec(tmp_path: Path, models: list[str], judge: dict, reward_grid: dict | None = None) -> Path:
    return _spec(tmp_path, models, {"judge": judge, "num_samples": 2},
                 [{"recipe": "reward", **({"grid": reward_grid} if reward_grid else {})},
                  {"recipe": "sft", "metric": "judge_reward"}, {"recipe": "dpo", "start_from": "sft"}])


def test_a_reward_cell_of_the_study_judges_every_judged_cell_which_waits_for_it(tmp_path):
    from align_proxy.studies.cell_runs import cell_command
    from align_proxy.studies.execute.cells import needed_dirs
    from align_proxy.studies.execute.scheduler import stranded

    spec = load_spec(_cell_judged_spec(tmp_path, ["ladder-s", "ladder-m"], {"recipe": "reward", "model": "ladder-m"}))
    assert spec.judge_cell == {"recipe": "reward", "variant": "default", "model": "ladder-m", "seed": 0}
    cells = spec.cells()
    (judge,) = [c for c in cells if (c.recipe, c.model) == ("reward", "ladder-m")]
    judged = [c for c in cells if c.recipe in ("sft", "dpo")]
    assert len(judged) == 4 and all(c.judge_from == judge.config_hash and judge.config_hash in c.needs for c in judged)
    assert all(c.judge_from is None for c in cells if c.recipe == "reward")  # a reward model writes nothing to judge
    _, argv = cell_command(judged[0], "recipes/sft.py", "c.yaml", tmp_path / "cell", tmp_path / "base",
                           *needed_dirs(judged[0], lambda h: tmp_path / h))
    assert argv[argv.index("--eval_judge") + 1] == str(tmp_path / judge.config_hash)
    assert "eval_judge" not in judged[0].overrides  # the cell's hash names the judge by its cell, not a path
    # Another judge cell, another cell name: a judged result is never reused for another judge.
    other = load_spec(_cell_judged_spec(tmp_path, ["ladder-s", "ladder-m"], {"recipe": "reward", "model": "ladder-s"}))
    assert not {c.config_hash for c in other.cells() if c.recipe == "sft"} & {c.config_hash for c in judged}
    # If the judge cell fails, every judged cell is stranded, saying why.
    why = dict((c.config_hash, reason) for c, reason in stranded(judged, {judge.config_hash: "failed"}))
    assert len(why) == 4 and all("the cell whose reward model judges it" in r for r in why.values())


@pytest.mark.parametrize("judge, grid, message", [
    ({"recipe": "sft", "model": "ladder-m"}, None, "'sft' is not a recipe listed before the first judged one"),
    ({"recipe": "reward", "model": "ladder-xl"}, None, "'ladder-xl' is not one of the study's models"),
    ({"recipe": "reward", "model": "ladder-m", "seed": 7}, None, "7 is not one of the study's seeds"),
    ({"recipe": "reward", "model": "ladder-m"}, {"learning_rate": [1e-3, 3e-4]}, "name the one to be judged by"),
])
def test_a_judge_cell_error_names_the_key_and_the_fix(tmp_path, judge, grid, message):
    with pytest.raises(StudySpecError, match=message):
        load_spec(_cell_judged_spec(tmp_path, ["ladder-s", "ladder-m"], judge, grid))


@pytest.mark.slow  # a tiny reward model and two tiny SFT cells it judges: ~30 s
def test_a_study_trains_its_own_gold_reward_model_and_judges_with_it(tiny_ladder, tmp_path):
    small, large = (r.path for r in tiny_ladder)
    reward = dict(yaml.safe_load((REPO / "recipes/configs/reward_ladder_cpu.yaml").read_text()),
                  builtin_train_size=128, builtin_test_size=8, eval_size=8, max_steps=4, num_train_epochs=1)
    (tmp_path / "reward.yaml").write_text(yaml.safe_dump(reward))
    spec = _spec(tmp_path, [small, large], {"judge": {"recipe": "reward", "model": large}, "num_samples": 2},
                 [{"recipe": "reward", "config": str(tmp_path / "reward.yaml")}])
    raw = yaml.safe_load(spec.read_text())
    raw["recipes"].append({"recipe": "sft", "config": str(tmp_path / "sft.yaml"), "metric": "judge_reward"})
    spec.write_text(yaml.safe_dump(raw))
    result = subprocess.run([sys.executable, "-m", "align_proxy.cli", "study", str(spec), "--jobs", "2"],
                            capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    db = tmp_path / "study" / "results.sqlite"
    (judge,) = [h for (h,) in rows(db, f"SELECT config_hash FROM cells WHERE recipe = 'reward' AND model = '{large}'")]
    judge_dir = tmp_path / "study" / "cells" / judge
    for (cell,) in rows(db, "SELECT config_hash FROM cells WHERE recipe = 'sft'"):
        details = json.loads((tmp_path / "study" / "cells" / cell / "metrics.json").read_text())["eval"]["details"]
        assert [j["path"] for j in details["trained"]["judge"]["judges"]] == [str(judge_dir.resolve())]
    report = json.loads((tmp_path / "study" / "report.json").read_text())
    assert report["judge"]["cell"]["config_hash"] == judge and report["judge"]["judges"][0]["sha256"]
    assert {"judge_reward", "win_rate_vs_reference", "win_rate_vs_base", "length_controlled_win_rate"} <= {
        g["metric"] for g in report["gains"]}
