"""Evaluation: the evaluators score completions, preferences and reward models by the metric table's rules, on
held-out items every recipe shares."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from align_proxy.data.tasks import get_task
from align_proxy.evals.metrics import load_metric
from align_proxy.metrics import METRICS, aggregate, preference_win
from align_proxy.models.tokenizer import build_tokenizer
from align_proxy.scoring import completion_logprobs
from align_proxy.run_metrics import gains
from align_proxy.evals.suite import EvalSet, evaluate_policy, evaluate_reward_model


@pytest.mark.parametrize("name", ["task_accuracy", "preference_accuracy", "completion_nll", "reward"])
def test_the_evaluate_form_of_the_metric_table_totals_by_the_tables_rule(name):
    """One rule per metric: `evaluate`'s total is the evaluators' (`aggregate`), a tie's half and the per-token
    weighting included; loaded from the shipped module, never the Hub."""
    loaded = load_metric(name)
    assert type(loaded).__module__.rsplit(".", 1)[-1] == "align_proxy_metric"
    if name == "completion_nll":
        scored = loaded.compute(sums=[2.0, 4.0], num_tokens=[1, 4])
        assert scored == {name: aggregate(name, [], tokens=[1, 4], sums=[2.0, 4.0])} == {name: 1.2}
    else:
        items = [preference_win(m) for m in (1.0, 0.0, -2.0, 3.0)]  # 1, 0.5, 0, 1
        assert loaded.compute(scores=items) == {name: aggregate(name, items)} == {name: 0.625}


def test_completion_logprobs_score_only_completion_tokens_and_eos(tiny_model):
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    tok = build_tokenizer()
    sums, counts = completion_logprobs(model, tok, ["12+35=", "1+1="], ["47", "2"])
    assert counts == [3, 2]  # answer digits + </s>
    ids = tok("12+35=47</s>", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logps = torch.log_softmax(model(ids).logits[0, :-1], -1).gather(-1, ids[0, 1:, None]).squeeze(-1)
    assert sums[0] == pytest.approx(logps[-3:].sum().item(), abs=1e-4)


def test_policy_evaluation_reports_every_metric_and_reference_is_neutral(tiny_model):
    task = get_task("arith")
    evalset = EvalSet.for_recipe(task.preference(40, split="test"), task, size=40)
    evaluated = evaluate_policy(tiny_model, build_tokenizer(), evalset, reference_path=tiny_model, beta=0.1)
    result = evaluated.metrics
    assert set(evaluated.items) == set(result) and set(result) <= set(METRICS)  # every one declared in the table
    assert len(evaluated.items["task_accuracy"]) == 40 and len(evaluated.items["preference_accuracy"]) == 40
    assert sum(evaluated.items["task_accuracy"]) / 40 == result["task_accuracy"]
    assert set(result) == {"task_accuracy", "completion_nll", "preference_accuracy", "preference_margin",
                           "implicit_reward_accuracy", "implicit_reward_margin"}
    assert result["implicit_reward_accuracy"] == 0.5 and result["implicit_reward_margin"] == 0.0
    assert 0.0 <= result["task_accuracy"] <= 1.0 and result["completion_nll"] > 0


def test_base_model_prefers_gold_over_mistakes_more_than_chance(tiny_model):
    """The tiny ladder is a base model with partial skill: its likelihood already favours gold."""
    task = get_task("arith")
    evalset = EvalSet(pairs=task.preference(200, split="test"))
    assert evaluate_policy(tiny_model, build_tokenizer(), evalset).metrics["preference_accuracy"] > 0.6


def test_reward_model_base_is_a_seeded_fresh_head(tiny_model):
    task = get_task("arith")
    evalset = EvalSet(pairs=task.preference(50, split="test"))
    first = evaluate_reward_model(tiny_model, build_tokenizer(), evalset, seed=0)
    assert first == evaluate_reward_model(tiny_model, build_tokenizer(), evalset, seed=0)


def test_gains_are_trained_minus_base():
    assert gains({"a": 0.5, "b": 1.0}, {"a": 0.75, "c": 2.0}) == {"a": 0.25}


def test_builtin_task_runs_of_every_recipe_are_scored_on_the_same_items():
    task = get_task("arith")
    sft = EvalSet.for_recipe(task.sft(20, split="test", seed=3), task, size=20, seed=0)
    dpo = EvalSet.for_recipe(task.preference(20, split="test", seed=5), task, size=20, seed=0)
    for name in ("pairs", "completions", "task_prompts"):
        assert getattr(sft, name).to_list() == getattr(dpo, name).to_list()
    other_seed = EvalSet.for_recipe(task.sft(20, split="test"), task, size=20, seed=1)
    assert other_seed.task_prompts.to_list() != sft.task_prompts.to_list()
