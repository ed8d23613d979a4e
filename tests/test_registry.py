"""The model registry: parameter counts, and CLIMB entries that say what to do when unavailable."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from align_proxy.models import registry


@pytest.mark.parametrize("name, expected", [("climb-62m", 62.6e6), ("climb-350m", 345e6)])
def test_climb_entries_know_their_parameter_count(name, expected):
    count = registry.parameters_from_config(registry.CLIMB[name].config())
    assert abs(count - expected) / expected < 0.01


def test_climb_offline_error_says_where_to_put_a_converted_model():
    with pytest.raises(registry.ModelUnavailableError) as err:
        registry.resolve("climb-62m")
    message = str(err.value)
    assert "HF_HUB_OFFLINE" in message and "Megatron-LM" in message
    assert str(registry.climb_cache_dir(registry.CLIMB["climb-62m"])) in message


def test_a_converted_climb_directory_in_the_cache_resolves(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGN_PROXY_HOME", str(tmp_path))  # a private cache: other tests expect none
    target = registry.climb_cache_dir(registry.CLIMB["climb-62m"])
    tiny = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=1)
    LlamaForCausalLM(tiny).save_pretrained(target)
    resolved = registry.resolve("climb-62m")
    assert resolved.path == str(target) and resolved.source == "climb"


def test_megatron_checkpoint_file_is_refused_with_advice(tmp_path):
    ckpt = tmp_path / "model_optim_rng.pt"
    torch.save({"model": {}}, ckpt)
    with pytest.raises(registry.ModelUnavailableError, match="Megatron-LM checkpoint must be converted"):
        registry.resolve(str(ckpt))
    with pytest.raises(registry.ModelUnavailableError, match="no config.json"):
        registry.resolve(str(tmp_path))


def test_unknown_hub_id_offline_points_to_the_ladder():
    with pytest.raises(registry.ModelUnavailableError, match="ladder-m"):
        registry.resolve("someone/some-model")


def test_local_directory_resolves_with_tied_parameters_counted_once(tiny_model):
    resolved = registry.resolve(tiny_model)
    model = LlamaForCausalLM.from_pretrained(tiny_model)
    assert resolved.source == "local"
    assert resolved.parameters == sum(p.numel() for p in model.parameters())  # parameters() dedups tied ones
    assert model.config.tie_word_embeddings


def test_climb_tokenizer_is_found_without_fetching_the_checkpoint(monkeypatch):
    """Data checks need only the tokenizer: a CLIMB name must not trigger a checkpoint download."""
    from align_proxy.recipe import load_tokenizer

    monkeypatch.setattr(registry, "resolve", lambda *a, **k: pytest.fail("resolved the model for a tokenizer"))
    with pytest.raises(ValueError, match="(?s)hf-internal-testing/llama-tokenizer.*--tokenizer_name_or_path"):
        load_tokenizer("climb-62m", None)  # offline in tests: the Hub copy of Llama-2's tokenizer is unreachable


def test_a_local_count_is_kept_per_config_so_a_study_coordinator_skips_transformers(tmp_path, monkeypatch):
    """A study's coordinator resolves every model; the second time a config is seen, its count comes from the cache
    without building the model (what imports torch and transformers there). An edited config.json is counted again."""
    import json

    monkeypatch.setenv("ALIGN_PROXY_HOME", str(tmp_path / "home"))
    LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1)).save_pretrained(tmp_path / "m")
    expected = sum(p.numel() for p in LlamaForCausalLM.from_pretrained(tmp_path / "m").parameters())
    assert registry.resolve(str(tmp_path / "m")).parameters == expected  # counted on the meta device
    count = registry.parameters_from_config
    monkeypatch.setattr(registry, "parameters_from_config", lambda config: pytest.fail("counted again"))
    assert registry.resolve(str(tmp_path / "m")).parameters == expected  # read back
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**config, "intermediate_size": 48}))
    monkeypatch.setattr(registry, "parameters_from_config", count)
    assert registry.resolve(str(tmp_path / "m")).parameters == expected + 3 * 16 * 16  # another config, recounted
