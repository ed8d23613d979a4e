"""Overoptimization measured on tiny models: one best-of-n pool scored by every reward model, curves that follow
from it exactly, and the `align-proxy overoptimization` command's files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification

from align_proxy.cli import main
from align_proxy.models.tokenizer import build_tokenizer
from align_proxy.studies.analysis import OveroptimizationCurve
from align_proxy.studies import overoptimization_run as best_of_n
from align_proxy.rewards import get_reward


@pytest.fixture(scope="module")
def reward_models(tiny_ladder, tmp_path_factory):
    """One (untrained) reward model per tiny rung: different sizes, different opinions."""
    paths = []
    for rung in tiny_ladder:
        path = tmp_path_factory.mktemp(f"rm-{rung.name}")
        torch.manual_seed(0)
        AutoModelForSequenceClassification.from_pretrained(rung.path, num_labels=1).save_pretrained(path)
        build_tokenizer().save_pretrained(path)
        paths.append(str(path))
    return paths


def test_one_pool_gives_each_reward_model_a_curve_that_starts_at_the_pools_mean(tiny_model, reward_models):
    curves, pool = best_of_n.run(tiny_model, reward_models[::-1], n=8, prompts=6, n_resamples=200)
    assert pool.size == 8 and len(pool.prompts) == 6
    assert [c.parameters for c in curves] == sorted(c.parameters for c in curves)  # smallest first
    gold = pool.score(get_reward("arith_exact_match"))
    for curve in curves:
        assert curve.form == "best_of_n" and curve.x == [1, 2, 4, 8]
        # n = 1 is the policy itself: the pool's mean, whatever the reward model says.
        assert curve.gold[:, 0] == pytest.approx(gold.mean(axis=1))
        # n = pool size picks each prompt's top-scored sample (ties shared).
        proxy = pool.score(best_of_n.learned(curve.reward_model))
        assert curve.proxy[:, -1] == pytest.approx(proxy.max(axis=1))
        assert np.all(np.diff(curve.proxy.mean(axis=0)) >= -1e-12)  # the proxy never falls with n
        # KL on the policy's own probabilities: none at n = 1, never above the formula (an upper bound).
        assert curve.kl_policy[0] == pytest.approx(0.0, abs=1e-12)
        assert np.all(curve.kl_policy <= curve.d ** 2 + 1e-9)
        json.dumps(OveroptimizationCurve.of(curve).to_json(), allow_nan=False)
    assert pool.logprobs.shape == (6, 8) and np.all(pool.logprobs < 0)


def test_a_pool_sampled_at_another_temperature_has_no_policy_probabilities(tiny_model, reward_models):
    """The model's log-probs are the sampling distribution's only at temperature 1."""
    curves, pool = best_of_n.run(tiny_model, reward_models[:1], n=4, prompts=3, n_resamples=50, temperature=0.7)
    assert pool.logprobs is None and curves[0].kl_policy is None and curves[0].kl_measured is not None


def test_the_command_writes_the_curves_and_their_plot(tiny_model, reward_models, tmp_path, capsys):
    assert main(["overoptimization", "--policy", tiny_model, "--reward-model", *reward_models, "--n", "8",
                 "--prompts", "4", "--output-dir", str(tmp_path)]) == 0
    document = json.loads((tmp_path / "overoptimization.json").read_text())
    assert document["pool_size"] == 8 and len(document["curves"]) == len(reward_models)
    assert (tmp_path / "overoptimization.png").read_bytes().startswith(b"\x89PNG")
    assert "best-of-n from" in capsys.readouterr().out


def test_a_run_without_a_recorded_curve_is_refused_with_the_flag_that_records_one(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"train": {"curve": []}}))
    (tmp_path / "run_config.yaml").write_text("script_args: {reward_funcs: []}\n")
    with pytest.raises(ValueError, match="--curve_every"):
        best_of_n.rl_curve(str(tmp_path))


def test_a_directory_that_is_not_a_reward_model_is_refused_before_sampling(tiny_model):
    with pytest.raises(ValueError, match="is not a reward model"):
        best_of_n.run(tiny_model, [tiny_model], n=4, prompts=2)
