"""Decoding-time proxy-tuning (align_proxy/proxy_tuning.py): the identities that pin the logit arithmetic, one
KV cache per model under `generate`, and the vocabulary check that runs before any weights load.

The models are tiny random Llamas over the ladder's tokenizer, built in milliseconds: the identities hold for
any weights, and random ones make every token's logit differ between models."""

from __future__ import annotations

import doctest
import math

import numpy as np
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


# --- studies: `proxy_tune: true` ------------------------------------------------------------------------------

def _spec(tmp_path, models, recipe: dict, seeds=(0,)):
    from align_proxy.studies.spec import load_spec

    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({"name": "proxy", "output_dir": str(tmp_path / "study"), "models": list(models),
                                    "seeds": list(seeds), "recipes": [recipe]}))
    return load_spec(path)


def test_proxy_tune_adds_one_cell_per_pair_variant_seed_and_alpha(trio, tmp_path):
    spec = _spec(tmp_path, [trio["small"], trio["expert"], trio["large"]],
                 {"recipe": "dpo", "grid": {"beta": [0.1, 0.3]}, "proxy_tune": True, "alpha": [0.5, 1.0]}, seeds=(0, 1))
    cells = spec.cells()
    proxy = [c for c in cells if c.kind == "proxy-tuning"]
    assert len(cells) - len(proxy) == 3 * 2 * 2 and len(proxy) == 3 * 2 * 2 * 2  # 3 pairs x variants x seeds x alphas
    by_hash = {c.config_hash: c for c in cells}
    for cell in proxy:  # each steers the larger model by the smaller model's own cell, same variant and seed
        expert = by_hash[cell.start_from]
        assert (expert.model, expert.variant, expert.seed) == (cell.params.small, cell.params.variant, cell.seed)
        assert spec.models.index(expert.model) < spec.models.index(cell.model)
    assert len({c.config_hash for c in cells}) == len(cells)


def test_the_shipped_proxy_tuning_study_steers_each_larger_rung_by_each_smaller_ones_cells():
    from support import REPO
    from align_proxy.studies.spec import load_spec

    cells = load_spec(REPO / "align_proxy/studies/proxy_tuning.yaml").cells()
    proxy = [c for c in cells if c.kind == "proxy-tuning"]
    assert len(cells) - len(proxy) == 12 and len(proxy) == 12  # 2 recipes x 3 pairs x 2 seeds
    assert {(c.params.small, c.model) for c in proxy} == {("ladder-s", "ladder-m"), ("ladder-s", "ladder-l"),
                                                            ("ladder-m", "ladder-l")}


@pytest.mark.parametrize("recipe, message", [
    ({"recipe": "reward", "proxy_tune": True}, "not a policy"),
    ({"recipe": "sft", "alpha": [0.5]}, "set proxy_tune: true"),
    ({"recipe": "sft", "proxy_tune": True, "alpha": []}, "non-empty list of numbers"),
])
def test_a_proxy_tune_spec_error_names_the_key_and_the_fix(trio, tmp_path, recipe, message):
    from align_proxy.studies.spec import StudySpecError

    with pytest.raises(StudySpecError, match=message):
        _spec(tmp_path, [trio["small"], trio["large"]], recipe)


@pytest.mark.slow
def test_a_study_with_proxy_tune_reports_the_gap_closed(tiny_ladder, tmp_path):
    import json
    import subprocess
    import sys

    from support import REPO

    config = dict(yaml.safe_load((REPO / "recipes/configs/sft_ladder_cpu.yaml").read_text()),
                  builtin_train_size=128, builtin_test_size=24, eval_size=24, max_steps=4, logging_steps=1)
    (tmp_path / "sft.yaml").write_text(yaml.safe_dump(config))
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"name": "proxy", "output_dir": str(tmp_path / "study"), "seeds": [0],
                                    "models": [r.path for r in tiny_ladder],
                                    # Judged too: a proxy-tuned model is judged as its expert's run was.
                                    "evaluation": {"judge": "arith_exact_match", "num_samples": 2},
                                    "recipes": [{"recipe": "sft", "config": str(tmp_path / "sft.yaml"),
                                                 "proxy_tune": True}]}))
    result = subprocess.run([sys.executable, "-m", "align_proxy.cli", "study", str(spec), "--jobs", "2"],
                            capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    printed = " ".join(result.stdout.split())  # a claim naming the models' long paths wraps at 120 columns
    assert "3/3 cells done" in printed and "(alpha 1)" in printed and "of the gap to" in printed, printed
    assert max(len(line) for line in result.stdout.splitlines()) <= 120 and "…" not in result.stdout, result.stdout
    report = json.loads((tmp_path / "study" / "report.json").read_text())
    gaps = {g["metric"]: g for g in report["gap_closed"]}
    assert {"task_accuracy", "preference_accuracy", "completion_nll", "judge_reward", "win_rate_vs_base"} <= set(gaps)
    (proxy_cell,) = [h for h in (tmp_path / "study" / "cells").iterdir()
                     if json.loads((h / "metrics.json").read_text())["kind"] == "proxy-tuning"]
    judged = json.loads((proxy_cell / "metrics.json").read_text())["eval"]
    assert judged["items"]["base"]["win_rate_vs_base"] == [0.5] * 24  # the large base against itself
    assert judged["details"]["trained"]["judge"]["judges"][0]["spec"] == "arith_exact_match"
    small, large = (r.name for r in tiny_ladder)
    assert (gaps["task_accuracy"]["small"], gaps["task_accuracy"]["large"]) == (tiny_ladder[0].path, tiny_ladder[1].path)
    assert report["gains"] and all(g["recipe"] == "sft" for g in report["gains"])  # proxy cells are not gains
    markdown = (tmp_path / "study" / "report.md").read_text()
    assert "Decoding-time proxy-tuning: gap closed" in markdown
    assert (tmp_path / "study" / "plots" / "gap_closed.png").exists()


def test_gap_closed_intervals_cover_the_true_share_in_the_studys_design():
    """The design a study's gap-closed cell has: one large base scored once on fixed items, 3 seeds of the
    directly tuned model and 3 seeds of the proxy-tuned one (each seed its own run, so its own seed effect),
    items that gain unevenly in a way the two share. The true share is the ratio of the expected gains."""
    rng = np.random.default_rng(0)
    true_tuned, true_proxy, n_items, n_seeds = 0.2, 0.12, 200, 3
    covered = defined = 0
    studies = 200
    for study in range(studies):
        item = rng.normal(0.0, 0.4, n_items)  # how much an item gains from tuning, shared by both
        tuned = [true_tuned + item + rng.normal(0, 0.05) + rng.normal(0, 0.3, n_items) for _ in range(n_seeds)]
        proxy = [true_proxy + 0.6 * item + rng.normal(0, 0.05) + rng.normal(0, 0.3, n_items) for _ in range(n_seeds)]
        iv = stats.gap_closed(proxy, tuned, stats.CrossedResampler(500, seed=study))
        if not math.isnan(iv.low):
            defined += 1
            covered += iv.covers(true_proxy / true_tuned)
    # With 3 seeds the seed part is a t with 2 degrees of freedom: the tuned gain's central replicates reach 0
    # (no share is given) in about a third of these studies. Where a share is given, it must cover.
    assert defined >= studies // 2
    assert covered / defined >= 0.92
