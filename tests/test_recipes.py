"""Each recipe trains a few steps on a tiny model the tests build, logging the losses TRL's own trainer logs on the
same model, config, data and seed, and its outputs load; a run whose loss explodes ends as a diverged result, not a
traceback."""

import json
import math

import pytest
import yaml
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from support import (assert_losses_match_plain_trl, changed, losses, plain_trl_losses, recipe_parser,
                     run_recipe)

def assert_run_outputs(out, base_path):
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["eval"]) == {"base", "trained", "gain", "items"} and metrics["eval"]["trained"]
    items = metrics["eval"]["items"]
    for name, scores in items["trained"].items():  # paired per-item scores for every metric
        assert len(scores) == len(items["base"][name]) > 0
    assert any("loss" in h for h in metrics["train"]["log_history"])
    assert (out / "loss_curve.png").stat().st_size > 1000
    resolved = yaml.safe_load((out / "run_config.yaml").read_text())
    assert resolved["model"]["path"] == base_path and resolved["training_args"]["output_dir"] == str(out)
    assert "speed_plan" in resolved  # what the proxy-speed plan changed, before -> after (align_proxy/speed.py)
    return metrics


@pytest.mark.slow
def test_sft_recipe_trains_and_saves_a_loadable_model(tiny_model, tmp_path, capsys):
    run = ("--max_steps", "6", "--builtin_train_size", "256", "--eval_size", "40")
    run_recipe("sft", "sft_ladder_cpu.yaml", tmp_path / "run", tiny_model, *run)
    # The speed plan's diff opens the log: the config sets checkpointing, the one setting a CPU plan would change.
    assert "proxy speed on cpu: 0 setting(s) changed" in capsys.readouterr().out
    metrics = assert_run_outputs(tmp_path / "run", tiny_model)
    assert_losses_match_plain_trl(losses(metrics), plain_trl_losses("sft", "sft_ladder_cpu.yaml", tmp_path / "plain",
                                                                    tiny_model, *run))
    assert losses(metrics)[-1] < losses(metrics)[0]  # it learns: gold completions of a task the base half knows
    assert set(metrics["eval"]["trained"]) >= {"task_accuracy", "completion_nll", "preference_accuracy"}
    AutoModelForCausalLM.from_pretrained(tmp_path / "run")
    assert changed(tmp_path / "run", tiny_model)


@pytest.mark.slow
def test_dpo_recipe_trains_and_reports_implicit_reward(tiny_model, tmp_path):
    run = ("--max_steps", "6", "--builtin_train_size", "256", "--eval_size", "40")
    run_recipe("dpo", "dpo_ladder_cpu.yaml", tmp_path / "run", tiny_model, *run)
    metrics = assert_run_outputs(tmp_path / "run", tiny_model)
    assert_losses_match_plain_trl(losses(metrics), plain_trl_losses("dpo", "dpo_ladder_cpu.yaml", tmp_path / "plain",
                                                                    tiny_model, *run))
    # Steps 1 and 2 score a policy equal to its reference (warm-up starts at a learning rate of 0): their mean loss
    # is log 2 on any machine. Then the margin of gold answers over mistakes grows.
    assert losses(metrics)[0] == pytest.approx(math.log(2), rel=1e-6)
    assert losses(metrics)[-1] < losses(metrics)[0]
    assert metrics["eval"]["base"]["implicit_reward_accuracy"] == 0.5  # the reference against itself
    assert "implicit_reward_accuracy" in metrics["eval"]["gain"]
    AutoModelForCausalLM.from_pretrained(tmp_path / "run")
    assert changed(tmp_path / "run", tiny_model)


@pytest.mark.slow
def test_lora_is_one_flag_and_saves_adapter_and_merged_model(tiny_model, tmp_path):
    run_recipe("dpo", "dpo_ladder_cpu.yaml", tmp_path, tiny_model, "--max_steps", "4", "--builtin_train_size",
               "128", "--eval_size", "20", "--use_peft", "--lora_r", "4", "--lora_alpha", "8",
               "--learning_rate", "1e-2")
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert changed(tmp_path, tiny_model)


@pytest.mark.slow
def test_reward_recipe_learns_to_rank_gold_above_mistakes(tiny_model, tmp_path):
    run = ("--builtin_train_size", "2048", "--eval_size", "200", "--num_train_epochs", "2")
    run_recipe("reward", "reward_ladder_cpu.yaml", tmp_path / "run", tiny_model, *run)
    metrics = assert_run_outputs(tmp_path / "run", tiny_model)
    # Its first 16 of 128 steps (8 logged losses), under the whole run's schedule: the seeded score head, the data
    # order and the loss are TRL's own.
    reference = plain_trl_losses("reward", "reward_ladder_cpu.yaml", tmp_path / "plain", tiny_model, *run, steps=16)
    assert_losses_match_plain_trl(losses(metrics)[:len(reference)], reference)
    trained = metrics["eval"]["trained"]["preference_accuracy"]
    # 200 held-out pairs: above 0.6 is beyond chance at p < 0.005 (one-sided binomial).
    assert trained > 0.6, metrics["eval"]
    assert trained > metrics["eval"]["base"]["preference_accuracy"]
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run")
    assert model.config.num_labels == 1


def test_stale_config_keys_fail_loudly(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model_name_or_path: ladder-s\nnot_a_real_option: 3\n")
    with pytest.raises(ValueError, match="not_a_real_option"):
        recipe_parser("dpo").parse_args_and_config(["--config", str(bad)])


@pytest.mark.slow
def test_an_exploding_loss_ends_the_run_as_diverged_without_a_traceback(tiny_model, tmp_path, capfd):
    record = run_recipe("sft", "sft_ladder_cpu.yaml", tmp_path, tiny_model, "--max_steps", "20", "--learning_rate",
                        "100", "--builtin_train_size", "256", "--eval_size", "20")
    out, err = capfd.readouterr()
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["diverged"] == record.diverged.to_json()
    step, loss = metrics["diverged"]["step"], metrics["diverged"]["loss"]
    assert step < 20 and (loss > 1e4 or loss != loss)  # stopped early, at the first logged loss past the limit
    assert metrics["train"]["global_step"] == step
    assert metrics["eval"]["base"] and metrics["eval"]["trained"] == {} and metrics["eval"]["gain"] == {}
    assert not (tmp_path / "model.safetensors").exists()  # neither saved nor evaluated
    assert [line for line in out.splitlines() if "diverged" in line] == [
        f"[align-proxy] training diverged at step {step}: loss {loss:.4g} (limit 10000, --divergence_threshold); the "
        f"model is not saved or evaluated, and {tmp_path / 'metrics.json'} records the divergence"]
    assert "Traceback" not in out + err


def test_the_console_table_marks_losses_as_well_as_gains():
    from align_proxy.run_metrics import format_comparison

    table = format_comparison("dpo", "ladder-m", {"task_accuracy": 0.145, "completion_nll": 1.0, "kl_to_reference": 0.0},
                              {"task_accuracy": 0.13, "completion_nll": 0.9, "kl_to_reference": 2.0})
    rows = {line.split()[0]: line.split()[-1] for line in table.splitlines()[3:-1]}
    assert rows == {"task": "worse", "completion": "better", "KL": "change"}
    assert "no interval" in table.splitlines()[-1]
