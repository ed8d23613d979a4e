"""Rewards: the registry resolves every form a config can name, and a broken reward fails by name."""

import doctest

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
from trl import GRPOConfig

from align_proxy import rewards
from align_proxy.models.tokenizer import build_tokenizer
from align_proxy.scoring import reward_scores
from align_proxy.rewards import RewardError, arith, combine, get_reward, learned, load_rewards, shaping
from align_proxy.rewards.combine import CheckedReward
from align_proxy.rewards.learned import LearnedReward
from support import gives_nan


@pytest.mark.parametrize("module", [rewards, arith, combine, shaping], ids=lambda m: m.__name__)
def test_reward_doctests_hold(module):
    failed, attempted = doctest.testmod(module)
    assert attempted > 0 and failed == 0


def test_every_form_of_name_resolves(tmp_path):
    assert get_reward("arith_exact_match") is arith.exact_match
    assert get_reward("align_proxy.rewards.shaping:answer_format") is shaping.answer_format
    penalty = get_reward("overlong_penalty", GRPOConfig(output_dir=str(tmp_path), max_completion_length=8,
                                                        use_cpu=True, bf16=False))
    assert penalty(["1+1="], ["2222222"], completion_ids=[[5] * 7]) == [-0.5]  # follows max_completion_length


def test_unknown_reward_lists_the_registered_ones():
    with pytest.raises(KeyError, match="arith_exact_match.*overlong_penalty"):
        get_reward("exact_match")


def test_a_factory_reward_needs_the_run_config():
    with pytest.raises(ValueError, match="overlong_penalty"):
        get_reward("overlong_penalty")


def test_format_reward_pays_only_a_bare_answer():
    assert shaping.answer_format(["12+35="] * 4, ["47", " 47 ", "47+1", ""]) == [1.0, 1.0, 0.0, 0.0]


# --- validation: a broken reward is an error that names it -----------------------------------------

def too_few(prompts, completions, **kwargs):
    return [1.0] * (len(completions) - 1)


def gives_text(prompts, completions, **kwargs):
    return ["1.0"] * len(completions)


def gives_none(prompts, completions, **kwargs):
    return [None] * len(completions)


def gives_scalar(prompts, completions, **kwargs):
    return 1.0


@pytest.mark.parametrize("fn, why", [(too_few, "returned 1 value.* for 2 completions"),
                                     (gives_nan, "returned nan for completion 0"),
                                     (gives_text, "returned str '1.0' for completion 0"),
                                     (gives_none, "returned None for completion 0"),
                                     (gives_scalar, "returned float 1.0")], ids=lambda x: getattr(x, "__name__", ""))
def test_a_broken_reward_fails_naming_itself(fn, why):
    checked = CheckedReward(fn.__name__, fn)
    with pytest.raises(RewardError, match=f"reward '{fn.__name__}' {why}"):
        checked(["1+1=", "2+2="], ["2", "4"])


def test_tensors_and_numpy_values_are_numbers():
    checked = CheckedReward("tensor", lambda prompts, completions, **kw: torch.tensor([1.0, 0.0]))
    assert checked(["1+1=", "2+2="], ["2", "5"]) == [1.0, 0.0]
    checked = CheckedReward("numpy", lambda prompts, completions, **kw: [np.float32(0.5), np.int64(1)])
    assert checked(["1+1=", "2+2="], ["2", "5"]) == [0.5, 1.0]


def no_kwargs(prompts, completions):
    return [0.0] * len(completions)


def test_a_reward_that_cannot_take_trls_arguments_is_refused_at_load():
    with pytest.raises(RewardError, match="reward 'no_kwargs' .* add \\*\\*kwargs"):
        load_rewards(["test_rewards:no_kwargs"])


def test_weights_must_match_rewards_and_combine_as_trl_sums_them():
    with pytest.raises(RewardError, match="1 reward weight.* for 2 reward.*arith_exact_match, answer_format"):
        load_rewards(["arith_exact_match", "answer_format"], [1.0])
    reward_set = load_rewards(["arith_exact_match", "answer_format"], [1.0, 0.5])
    per_reward, total = reward_set.score(["12+35=", "12+35="], ["47", "46 and"], answer=["47", "47"])
    assert per_reward == {"arith_exact_match": [1.0, 0.0], "answer_format": [1.0, 0.0]}
    assert total == [1.5, 0.0]


def test_no_reward_is_an_error_saying_how_to_name_one():
    with pytest.raises(RewardError, match="--reward_funcs"):
        load_rewards([])


def test_repeated_rewards_get_unique_names():
    assert load_rewards(["arith_exact_match", "align_proxy.rewards.arith:exact_match"]).names == ["arith_exact_match",
                                                                                      "exact_match"]
    assert load_rewards(["answer_format", "answer_format"]).names == ["answer_format", "answer_format_2"]


# --- learned rewards ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def reward_model_dir(tiny_model, tmp_path_factory):
    """A reward model directory as recipes/reward.py writes it (the score head untrained: the wrapper's
    plumbing is under test here; tests/test_rl.py trains one)."""
    path = tmp_path_factory.mktemp("reward-model")
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=1).save_pretrained(path)
    build_tokenizer().save_pretrained(path)
    return str(path)


def test_a_reward_model_directory_is_a_learned_reward(reward_model_dir):
    reward = get_reward(reward_model_dir)
    assert isinstance(reward, LearnedReward) and reward.__name__ == "learned_reward"
    scores = reward(["12+35=", "12+35="], ["47", "46"])
    assert len(scores) == 2 and scores[0] != scores[1]
    # Scored as the reward trainer trained it and the evaluation scores it: BOS + prompt + completion + EOS.
    model = AutoModelForSequenceClassification.from_pretrained(reward_model_dir)
    assert scores == pytest.approx(reward_scores(model, build_tokenizer(), ["12+35="] * 2, ["47", "46"]), abs=1e-5)


def test_a_reward_model_with_a_chat_template_reads_a_conversation_through_its_own_template(reward_model_dir,
                                                                                          tmp_path):
    """A judge such as a Hub reward model scores a conversation as it was trained to read it: its own tokenizer's
    template renders prompt and reply as one conversation (TRL's RewardTrainer: apply_chat_template(prompt +
    chosen)), not the flattened text a template-less reward model reads."""
    from align_proxy.chat_template import install_chat_template

    templated = tmp_path / "templated-rm"
    model = AutoModelForSequenceClassification.from_pretrained(reward_model_dir)
    model.save_pretrained(templated)
    tokenizer = build_tokenizer()
    install_chat_template(tokenizer, "minimal")
    tokenizer.save_pretrained(templated)
    prompt = [{"role": "user", "content": "12+35="}]
    replies = [[{"role": "assistant", "content": "47"}], [{"role": "assistant", "content": "46"}]]
    scores = LearnedReward(templated)([prompt, prompt], replies)
    rendered = [tokenizer.apply_chat_template(prompt + reply, tokenize=True, return_dict=True)["input_ids"]
                for reply in replies]
    with torch.no_grad():
        direct = [model(input_ids=torch.tensor([ids])).logits[0, 0].item() for ids in rendered]
    assert scores == pytest.approx(direct, abs=1e-5)
    flattened = LearnedReward(reward_model_dir)([prompt, prompt], replies)  # no template: the text it was trained on
    assert flattened == pytest.approx(LearnedReward(reward_model_dir)(["12+35="] * 2, ["47", "46"]), abs=1e-6)
    assert scores != pytest.approx(flattened, abs=1e-4)


def test_a_hub_reward_model_offline_is_refused_saying_how_to_use_it(tmp_path):
    """A Hub id (a RewardBench reward model, say) is a learned reward; offline (conftest sets HF_HUB_OFFLINE) it is
    refused on its config, before any weights load, naming the id and how to pass a downloaded copy instead."""
    from align_proxy.studies.spec import StudySpecError, load_spec

    assert learned.is_hub_id("someone/a-reward-model") and not learned.is_hub_id("arith_exact_match")
    for check in (get_reward, rewards.check_reward_spec):
        with pytest.raises(RewardError, match=r"'someone/a-reward-model'.*Hub id.*huggingface-cli download"):
            check("someone/a-reward-model")
    spec = tmp_path / "spec.yaml"
    spec.write_text("models: [ladder-s, ladder-m]\nevaluation: {judge: someone/a-reward-model}\n"
                    "recipes: [{recipe: sft}]\n")
    with pytest.raises(StudySpecError, match="evaluation.judge: reward 'someone/a-reward-model'"):
        load_spec(spec)
    assert rewards.reward_identity("someone/a-reward-model") == {"spec": "someone/a-reward-model", "path": None,
                                                                  "sha256": None}


def test_a_policy_directory_is_not_a_reward_model(tiny_model):
    assert not learned.is_reward_model_dir(tiny_model)
    with pytest.raises(ValueError, match="not a reward model.*recipes/reward.py"):
        LearnedReward(tiny_model)
    AutoModelForCausalLM.from_pretrained(tiny_model)  # it is a causal LM: the error is about its kind, not its files
