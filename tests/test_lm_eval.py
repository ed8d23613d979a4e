"""lm-evaluation-harness tasks as metrics: a recipe run scores the shipped local task on its base and trained model per
item, a study judges a recipe on an lm-eval metric like any other, and a task that cannot run (unknown, or a Hub
dataset offline) is refused before any model is read."""

import doctest
import json
import re

import pytest
import yaml

from support import (MODELS, assert_losses_match_plain_trl, everywhere, gain_of, headline, losses, plain_trl_losses,
                     planted_cells, run_recipe, write_spec)

from align_proxy.studies.spec import StudySpecError, load_spec
from align_proxy.evals import lm_harness
from align_proxy.evals.lm_eval_tasks import arith_mc

TASK = "lm_eval:arith_mc"
SCORES = ("acc", "acc_norm", "logprob", "logprob_per_byte")


def test_lm_eval_doctests_hold():
    from align_proxy import metrics

    for module in (lm_harness, metrics):
        failed, attempted = doctest.testmod(module)
        assert attempted and not failed


def test_the_shipped_task_data_is_what_its_builder_writes():
    shipped = [json.loads(line) for line in arith_mc.DATA.read_text().splitlines()]
    assert shipped == arith_mc.build_items()
    assert all(item["choices"][item["label"]] == str(answer_of(item["question"])) for item in shipped)
    assert all(len(set(item["choices"])) == arith_mc.CHOICES for item in shipped)


def answer_of(question: str) -> int:
    from align_proxy.data.tasks import parse_prompt

    return parse_prompt(question).value


@pytest.mark.slow
def test_a_recipe_run_records_base_and_trained_lm_eval_scores_per_item(tiny_model, tmp_path):
    cache = tmp_path / "base-evals"
    run = ("--max_steps", "6", "--builtin_train_size", "256", "--eval_size", "40")
    # The SFT recipe test's run, plus the shipped task: lm-eval must not disturb training (the losses stay those of
    # TRL's own trainer on the same model, data and seed, which runs no lm-eval at all).
    run_recipe("sft", "sft_ladder_cpu.yaml", tmp_path / "run", tiny_model, *run, "--lm_eval_tasks", "arith_mc",
               "--lm_eval_limit", "24", "--base_eval_cache", str(cache))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert_losses_match_plain_trl(losses(metrics), plain_trl_losses("sft", "sft_ladder_cpu.yaml", tmp_path / "plain",
                                                                    tiny_model, *run))
    scores = metrics["eval"]
    for score in SCORES:
        name = f"{TASK}/{score}"
        base, trained = scores["items"]["base"][name], scores["items"]["trained"][name]
        assert len(base) == len(trained) == 24
        assert scores["base"][name] == pytest.approx(sum(base) / 24)
        assert scores["trained"][name] == pytest.approx(sum(trained) / 24)
    assert set(scores["items"]["base"][f"{TASK}/acc"]) <= {0.0, 1.0}
    assert all(x < 0 for x in scores["items"]["base"][f"{TASK}/logprob"])
    # Training on the task moves the likelihood of its answers.
    assert scores["items"]["trained"][f"{TASK}/logprob"] != scores["items"]["base"][f"{TASK}/logprob"]
    assert scores["trained"]["task_accuracy"] is not None  # the built-in metrics are still there
    # The base model's lm-eval scores are cached apart from its policy evaluation: other recipes share them.
    assert sorted(p.name.split("-")[0] for p in cache.glob("*.json")) == ["lm_eval", "policy"]


def test_an_unknown_lm_eval_task_is_refused_before_any_model_is_read(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGN_PROXY_HOME", str(tmp_path / "home"))  # a ladder rung read here would be built here
    with pytest.raises(lm_harness.LmEvalTaskError, match=r"unknown lm-eval task 'arc_eazy' \(did you mean 'arc_easy'"):
        run_recipe("sft", "sft_ladder_cpu.yaml", tmp_path / "run", "ladder-s", "--lm_eval_tasks", "arith_mc,arc_eazy")
    assert not (tmp_path / "home").exists() and not (tmp_path / "run").exists()


def test_a_hub_task_whose_data_is_not_cached_fails_naming_the_task_and_the_fix():
    # conftest sets HF_DATASETS_OFFLINE: what a machine without network sees, without waiting on its retries.
    with pytest.raises(lm_harness.LmEvalTaskError) as err:
        lm_harness.load_tasks("piqa")
    message = str(err.value)
    assert "'piqa'" in message and "HF_DATASETS_OFFLINE=1" in message and "arith_mc" in message


def test_a_task_file_from_elsewhere_says_which_python_it_runs_before_lm_eval_runs_it(tmp_path, capsys):
    # A copy of the shipped task: lm-eval imports arith_mc.py beside it for `!function arith_mc.load`.
    for name in ("arith_mc.yaml", "arith_mc.py", "arith_mc.jsonl"):
        (tmp_path / name).write_bytes((lm_harness.SHIPPED_TASKS / name).read_bytes())
    lm_harness.load_tasks(str(lm_harness.SHIPPED_TASKS / "arith_mc.yaml"))
    assert "run Python" not in capsys.readouterr().out  # shipped: installed code like lm-eval's own tasks
    assert list(lm_harness.load_tasks(str(tmp_path / "arith_mc.yaml"))) == ["arith_mc"]
    out = capsys.readouterr().out
    assert f"task file {tmp_path / 'arith_mc.yaml'} has lm-eval import and run Python: arith_mc.load " \
           f"({tmp_path / 'arith_mc.py'})" in out and "only task files you trust" in out
    lm_harness.load_tasks(str(tmp_path / "arith_mc.yaml"))
    assert "run Python" not in capsys.readouterr().out  # said once per process


def test_a_study_judges_a_recipe_on_an_lm_eval_metric_with_intervals_and_a_verdict(tmp_path):
    from align_proxy.studies.analysis import analyse
    from align_proxy.studies.report import render_markdown

    metric = f"{TASK}/logprob_per_byte"
    spec = load_spec(judged_spec(tmp_path, metric))
    assert spec.recipes[0].metric == metric and spec.evaluation == {"lm_eval_tasks": ["arith_mc"]}
    # Cells as a study of it records them: per-item scores on the same items for every seed, a clear gain.
    cells = planted_cells("sft", {"default": everywhere(0.05)}, metric=metric, base_level=-1.0)
    analysis = analyse(cells, MODELS, {plan.recipe: plan.metric for plan in spec.recipes}, n_resamples=500)
    assert headline(analysis, "sft").metric == metric
    assert analysis.metrics[metric].to_json() == {"label": "arith_mc/logprob_per_byte (lm-eval)",
                                                  "higher_is_better": True}
    for model in MODELS:
        gain = gain_of(analysis, "sft", "default", model, metric)
        assert gain.per_item and gain.gain.low > 0 and gain.verdict == "helps"
    assert "arith_mc/logprob_per_byte (lm-eval)" in render_markdown(analysis, {}, "lm-eval study")


def judged_spec(tmp_path, metric: str):
    spec_path = write_spec(tmp_path, "judged", {}, [0], recipe="sft", config={})
    raw = yaml.safe_load(spec_path.read_text())
    raw["evaluation"] = {"lm_eval_tasks": ["arith_mc"]}
    raw["recipes"][0]["metric"] = metric
    spec_path.write_text(yaml.safe_dump(raw))
    return spec_path


@pytest.mark.parametrize("metric, message", [
    (f"{TASK}/accuracy", "'accuracy' is not an lm-eval score"),
    ("lm_eval:arith_mcc/acc", "lm-eval task 'arith_mcc' is not evaluated (did you mean 'arith_mc'?)"),
])
def test_a_spec_judging_on_an_lm_eval_metric_it_does_not_evaluate_is_refused(tmp_path, metric, message):
    with pytest.raises(StudySpecError, match=re.escape(message)):
        load_spec(judged_spec(tmp_path, metric))


def test_a_spec_asking_lm_eval_of_a_reward_model_recipe_is_refused(tmp_path):
    spec_path = write_spec(tmp_path, "reward", {}, [0], recipe="reward", config={})
    raw = yaml.safe_load(spec_path.read_text())
    raw["evaluation"] = {"lm_eval_tasks": "arith_mc"}
    spec_path.write_text(yaml.safe_dump(raw))
    with pytest.raises(StudySpecError, match="the reward recipe trains no language model"):
        load_spec(spec_path)


def test_continuous_scores_follow_a_text_target_and_leave_out_unconditional_likelihoods():
    # lm-eval's acc_mutual_info appends each choice's unconditional log-likelihood after the conditional ones.
    sample = {"doc_id": 3, "target": "4", "filter": "none", "metrics": ["acc", "acc_mutual_info"], "acc": 1.0,
              "acc_mutual_info": 0.0, "arguments": [["2+2=", " 5"], ["2+2=", " 4"], ["", " 5"], ["", " 4"]],
              "filtered_resps": [[-3.0, False], [-1.0, True], [-0.5, False], [-0.2, False]]}
    scores = lm_harness.per_item_scores("t", [sample], multiple_choice=True)
    assert scores["lm_eval:t/logprob"] == [-1.0] and scores["lm_eval:t/logprob_per_byte"] == [-0.5]
    assert scores["lm_eval:t/acc_mutual_info"] == [0.0]


def test_a_spec_naming_an_unknown_lm_eval_task_is_refused_before_any_cell_runs(tmp_path):
    spec_path = judged_spec(tmp_path, "task_accuracy")
    raw = yaml.safe_load(spec_path.read_text())
    raw["evaluation"] = {"lm_eval_tasks": "arith_mc,arc_eazy"}
    spec_path.write_text(yaml.safe_dump(raw))
    with pytest.raises(StudySpecError, match=r"evaluation.lm_eval_tasks: .*unknown lm-eval task 'arc_eazy'"):
        load_spec(spec_path)
