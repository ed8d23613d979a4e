"""Decoding-time proxy-tuning (align_proxy/proxy_tuning.py): the identities that pin the logit arithmetic, one
KV cache per model under `generate`, and the vocabulary check that runs before any weights load.

The models are tiny random Llamas over the ladder's tokenizer, built in milliseconds: the identities hold for
any weights, and random ones make every token's logit differ between models."""

from __future__ import annotations

import doctest

import pytest
import torch
import yaml
from transformers import LlamaConfig, LlamaForCausalLM

from align_proxy import proxy_tuning
from align_proxy.models.tokenizer import build_tokenizer
from align_proxy.proxy_tuning import ProxyModels, VocabularyMismatchError, load_proxy_tuned
from align_proxy.scoring import completion_logprobs, greedy_generations
from align_proxy.studies import stats

PROMPTS = ["12+7=", "3-1=", "45+45=", "9="]
ANSWERS = ["19", "2", "90", "9"]


def _model(path, seed: int, hidden: int, extra_rows: int = 0, tokenizer=None) -> str:
    tokenizer = tokenizer or build_tokenizer()
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer) + extra_rows, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=64, bos_token_id=1, eos_token_id=2, pad_token_id=3)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # random init is near-uniform: spread the logits so greedy choices are not ties
        model.lm_head.weight.mul_(20)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def trio(tmp_path_factory):
    """A larger base and two small models, one with Megatron-style padded logit rows past the tokenizer."""
    root = tmp_path_factory.mktemp("proxy-trio")
    return {"large": _model(root / "large", 0, 32), "small": _model(root / "small", 1, 16),
            "expert": _model(root / "expert", 2, 16), "tuned": _model(root / "tuned", 2, 16, extra_rows=29)}


def _run(model, tokenizer):
    return greedy_generations(model, tokenizer, PROMPTS), completion_logprobs(model, tokenizer, PROMPTS, ANSWERS)[0]


def test_alpha_zero_is_exactly_the_base_model(trio):
    model, tokenizer = load_proxy_tuned(ProxyModels(trio["large"], trio["tuned"], trio["small"], alpha=0.0))
    assert _run(model, tokenizer) == _run(model.base, tokenizer)


def test_expert_equal_to_anti_expert_is_exactly_the_base_model(trio):
    model, tokenizer = load_proxy_tuned(ProxyModels(trio["large"], trio["small"], trio["small"], alpha=1.5))
    assert _run(model, tokenizer) == _run(model.base, tokenizer)


def test_base_equal_to_anti_expert_is_the_expert(trio):
    model, tokenizer = load_proxy_tuned(ProxyModels(trio["small"], trio["expert"], trio["small"], alpha=1.0))
    texts, logps = _run(model, tokenizer)
    expert_texts, expert_logps = _run(model.expert, tokenizer)
    assert texts == expert_texts and texts != _run(model.base, tokenizer)[0]
    # base + (expert - base) is the expert up to float rounding
    assert logps == pytest.approx(expert_logps, abs=1e-4)


def test_padded_logit_rows_are_dropped_and_each_model_keeps_its_cache(trio):
    model, tokenizer = load_proxy_tuned(ProxyModels(trio["large"], trio["tuned"], trio["small"], alpha=1.0))
    ids = tokenizer(PROMPTS, return_tensors="pt", padding=True, padding_side="left")
    assert model(**ids).logits.shape[-1] == len(tokenizer)
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    cached = model.generate(**ids, **kwargs)
    assert torch.equal(cached, model.generate(**ids, use_cache=False, **kwargs))
    torch.manual_seed(0)
    sampled = model.generate(**ids, do_sample=True, top_k=5, max_new_tokens=6, pad_token_id=tokenizer.pad_token_id)
    assert sampled.shape[0] == len(PROMPTS) and sampled.shape[1] > ids["input_ids"].shape[1]


def test_vocabulary_mismatch_is_refused_before_any_weights_load(trio, tmp_path, monkeypatch):
    other = build_tokenizer()
    other.add_tokens(["<tool>"])
    odd = _model(tmp_path / "odd", 3, 16, tokenizer=other)

    def no_loading(*args, **kwargs):
        raise AssertionError("weights loaded before the vocabulary check")

    monkeypatch.setattr(proxy_tuning.AutoModelForCausalLM, "from_pretrained", no_loading)
    with pytest.raises(VocabularyMismatchError, match="expert .*odd") as err:
        load_proxy_tuned(ProxyModels(trio["large"], odd, trio["small"]))
    assert trio["large"] in str(err.value) and "<tool>" in str(err.value)


def test_proxy_tune_command_prints_the_gap_closed(trio, tmp_path, capsys):
    from align_proxy.cli import main

    # The expert names its anti-expert the way a recipe's run_config.yaml does.
    (tmp_path / "run_config.yaml").write_text(yaml.safe_dump({"recipe": "sft", "model": {"name": trio["small"]}}))
    expert = _model(tmp_path, 2, 16)
    code = main(["proxy-tune", "--base", trio["large"], "--expert", expert, "--tuned", trio["tuned"],
                 "--eval-size", "16", "--dataset", "builtin:arith"])
    out = capsys.readouterr().out
    assert code == 0
    assert "gap closed" in out and "task accuracy" in out and "preference accuracy" in out
    assert f"- {trio['small']}" in out  # the anti-expert came from run_config.yaml


def test_gap_closed_doctests_hold():
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner()
    for test in finder.find(stats.gap_closed, "gap_closed", globs=vars(stats)):
        runner.run(test)
    assert runner.failures == 0 and runner.tries > 0
