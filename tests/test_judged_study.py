"""A judged study: its spec's `evaluation: {judge, num_samples}` reaches the cells whose replies a judge scores, its
headline is judged on a judged metric, report.json names the judge, and a study killed mid-way and rerun judges no
finished cell again."""

from __future__ import annotations

import hashlib
import json
import os
import signal
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
    ({"judge": "arith_exact_match"}, [{"recipe": "reward", "metric": "judge_reward"}], "judge gives nothing"),
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
            if db.exists():
                status = dict(rows(db, "SELECT status, COUNT(*) FROM cells GROUP BY status", timeout=0.2))
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
