"""No half-written models: the final model is staged and renamed into place with config.json last, and an
output directory that cannot be written stops a run before any model loads."""

import os

import pytest
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from align_proxy.models import registry
from align_proxy.outputs import OutputDirError, publish_model, reset_staging, staging_dir
from support import load_recipe, recipe_parser


def test_an_unwritable_output_dir_fails_before_any_model_loads(tmp_path, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("a model was resolved before the output directory was checked")

    monkeypatch.setattr(registry, "resolve", no_model)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    sft = load_recipe("sft")
    args = recipe_parser("sft").parse_args_and_config(
        ["--config", "recipes/configs/sft_ladder_cpu.yaml", "--output_dir", str(blocker / "out")])
    with pytest.raises(OutputDirError, match=f"cannot write to output_dir {blocker / 'out'}"):
        sft.main(*args)


def test_publishing_moves_config_json_last_and_replaces_the_old_model(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text("old")
    (out / "model.safetensors").write_text("old weights")
    (out / "run_config.yaml").write_text("kept")
    staging = reset_staging(out)
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        (staging / name).write_text("new")
    (staging / "adapter").mkdir()
    moved = []
    real_replace = os.replace

    def replace(src, dst):
        moved.append(os.path.basename(dst))
        real_replace(src, dst)

    os.replace = replace
    try:
        publish_model(out)
    finally:
        os.replace = real_replace
    assert moved[-1] == "config.json" and sorted(moved) == ["adapter", "config.json", "model.safetensors",
                                                            "tokenizer.json"]
    assert (out / "config.json").read_text() == "new" and (out / "run_config.yaml").read_text() == "kept"
    assert not staging_dir(out).exists()


def test_a_save_killed_midway_leaves_no_loadable_model(tmp_path, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    staging = reset_staging(out)
    config = LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1)
    LlamaForCausalLM(config).save_pretrained(staging)
    real_replace = os.replace

    def die_after_weights(src, dst):
        if os.path.basename(dst) == "config.json":
            raise KeyboardInterrupt("killed while publishing")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", die_after_weights)
    with pytest.raises(KeyboardInterrupt):
        publish_model(out)
    assert (out / "model.safetensors").exists() and not (out / "config.json").exists()
    with pytest.raises((OSError, ValueError)):  # transformers: "Should have a `model_type` key in its config.json"
        AutoModelForCausalLM.from_pretrained(out)
