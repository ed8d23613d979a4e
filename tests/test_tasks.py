"""The built-in task: seeded, held-out disjoint, with plausible mistakes and a correct gold reward."""

import pytest

from align_proxy.data.tasks import FORMATS, ArithmeticTask, Problem, get_task, parse_answer, parse_prompt
from align_proxy.rewards import get_reward
from align_proxy.rewards.arith import digit_overlap, exact_match

TASK = get_task("builtin:arith")


def test_same_seed_gives_same_rows_and_other_seed_differs():
    assert TASK.preference(50, seed=3).to_dict() == TASK.preference(50, seed=3).to_dict()
    assert TASK.preference(50, seed=3).to_dict() != TASK.preference(50, seed=4).to_dict()


def test_heldout_problems_never_appear_in_training_splits():
    train = set(TASK.pretraining_text(4000)["text"]) | set(TASK.sft(2000)["prompt"])
    train_prompts = {t.split("=")[0] + "=" for t in train}
    heldout = set(TASK.evaluation(300)["prompt"]) | set(TASK.preference(300, split="test")["prompt"])
    assert heldout and not heldout & train_prompts


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_each_format_has_trl_columns(fmt):
    splits = TASK.splits(fmt, n_train=20, n_test=5)
    assert tuple(splits["train"].column_names) == FORMATS[fmt]
    assert len(splits["train"]) == 20 and len(splits["test"]) == 5


def test_rejected_answers_are_wrong_but_plausible():
    pairs = TASK.preference(500, seed=1)
    for prompt, chosen, rejected in zip(pairs["prompt"], pairs["chosen"], pairs["rejected"]):
        assert chosen == parse_prompt(prompt).answer
        assert rejected != chosen and rejected.isdigit()
        assert abs(int(rejected) - int(chosen)) <= 200  # a slip, not a random number


def test_pretraining_text_carries_the_configured_share_of_mistakes():
    task = ArithmeticTask(noise=0.2)
    lines = task.pretraining_text(3000, seed=0)["text"]
    wrong = sum(not task.is_correct(line.split("=")[0] + "=", line.split("=")[1]) for line in lines)
    assert 0.15 < wrong / len(lines) < 0.25


def test_subtraction_never_goes_negative():
    problems = [TASK.sample(__import__("random").Random(i), heldout=False) for i in range(500)]
    assert all(p.value >= 0 for p in problems)


def test_gold_reward_scores_gold_one_and_mistakes_zero():
    pairs = TASK.preference(200, split="test", seed=2)
    prompts = list(pairs["prompt"])
    assert exact_match(prompts, list(pairs["chosen"])) == [1.0] * len(prompts)
    assert exact_match(prompts, list(pairs["rejected"])) == [0.0] * len(prompts)


def test_gold_reward_uses_the_answer_column_and_conversational_completions():
    assert exact_match(["1+1="], [[{"role": "assistant", "content": "2"}]]) == [1.0]
    assert exact_match(["1+1="], ["3"], answer=["3"]) == [1.0]  # the dataset's column wins
    assert exact_match(["12+35="] * 4, ["47 is it", "4", "", "047"]) == [1.0, 0.0, 0.0, 0.0]


def test_partial_credit_reward_is_between_zero_and_one():
    assert digit_overlap(["12+35="], ["47"]) == [1.0]
    assert digit_overlap(["50+50="], ["10"]) == [pytest.approx(1 / 3)]


def test_rewards_resolve_by_name_and_dotted_path():
    assert get_reward("arith_exact_match") is exact_match
    assert get_reward("align_proxy.rewards.arith:digit_overlap") is digit_overlap
    with pytest.raises(KeyError, match="registered rewards"):
        get_reward("no_such_reward")


def test_parse_helpers():
    assert parse_answer(" 12\n3+4=") == "12"
    assert parse_prompt("7-3=") == Problem(7, "-", 3)
    with pytest.raises(ValueError, match="not an arithmetic prompt"):
        parse_prompt("hello")


def test_unknown_task_names_the_known_ones():
    with pytest.raises(KeyError, match="builtin:arith"):
        get_task("builtin:nope")
