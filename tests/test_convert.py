"""Megatron-LM <-> Hugging Face conversion, proven against megatron-core's own forward on CPU."""

import argparse
import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

from align_proxy.cli import main as cli
from align_proxy.models.convert import (
    LAYOUTS,
    Architecture,
    convert_hf_to_megatron,
    convert_megatron_to_hf,
    megatron_to_hf,
)
from align_proxy.models.megatron import ConversionError, load_checkpoint
from align_proxy.models.tokenizer import build_tokenizer
from support import load_recipe, recipe_parser

pytest.importorskip("megatron.core", reason="parity needs megatron-core==0.16.1 (the [test] extra)")
from align_proxy.models.megatron_reference import build_gpt_model, cpu_megatron, megatron_logits  # noqa: E402

# Several query groups, three query heads per group (the proxies' ratio), tied embeddings.
ARCH = Architecture(num_layers=2, hidden_size=96, ffn_hidden_size=160, num_attention_heads=6, num_query_groups=2,
                    head_dim=16, vocab_size=128, tied=True)
TOKENS = torch.randint(0, ARCH.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))


def megatron_state(arch: Architecture, seed: int = 0) -> dict:
    """Weights of a real megatron-core GPTModel (local spec), norms randomised so a swap shows."""
    torch.manual_seed(seed)
    with cpu_megatron():
        state = build_gpt_model(arch).state_dict()
    state = {k: v.clone() for k, v in state.items() if not k.endswith("_extra_state")}
    for key, value in state.items():
        if value.ndim == 1:
            state[key] = 1.0 + 0.3 * torch.randn_like(value)
    return state


def rename_layout(local: dict, layout: str, arch: Architecture) -> dict:
    """The same weights under the TE-fused or the release's moe.experts.0 names."""
    out = {k: v for k, v in local.items() if not k.startswith("decoder.layers.")}
    for i in range(arch.num_layers):
        src = {name: pattern.format(i=i) for name, pattern in LAYOUTS["local"].items()}
        dst = {name: pattern.format(i=i) for name, pattern in LAYOUTS[layout].items()}
        for name in ("input_norm", "mlp_norm", "qkv", "proj"):
            out[dst[name]] = local[src[name]]
        if layout == "release":
            out[dst["gate"]], out[dst["up"]] = local[src["fc1"]].chunk(2, dim=0)
            out[dst["down"]] = local[src["fc2"]]
        else:
            out[dst["fc1"]], out[dst["fc2"]] = local[src["fc1"]], local[src["fc2"]]
            out[dst["fc1"].replace(".weight", "._extra_state")] = None  # TE's bookkeeping, never a tensor
    return {k: v for k, v in out.items() if v is not None}


def release_args(arch: Architecture) -> argparse.Namespace:
    """Megatron's args, with a Megatron enum in them as real checkpoints have."""
    from megatron.core.transformer.enums import AttnMaskType

    args = arch.megatron_args()
    args.attn_mask_type = AttnMaskType.causal
    return args


def save_release(path, state, arch, with_args=True):
    """The release's structure: model, optimizer, rng_state, iteration, args."""
    blob = {"model": state, "optimizer": {"state": {}, "param_groups": []},
            "rng_state": [{"random_rng_state": None, "torch_rng_state": torch.get_rng_state()}],
            "iteration": 2499000}
    if with_args:
        blob["args"] = release_args(arch)
    target = path / "iter_2499000" / "mp_rank_00" / "model_optim_rng.pt"
    target.parent.mkdir(parents=True)
    torch.save(blob, target)
    (path / "latest_checkpointed_iteration.txt").write_text("2499000")
    return target


def hf_logits(path) -> torch.Tensor:
    with torch.no_grad():
        return LlamaForCausalLM.from_pretrained(path, dtype=torch.float32)(TOKENS).logits


@pytest.fixture(scope="module")
def local_state():
    return megatron_state(ARCH)


@pytest.fixture(scope="module")
def reference_logits(local_state):
    return megatron_logits(local_state, ARCH, TOKENS)


@pytest.mark.parametrize("layout", ["local", "te", "release"])
def test_converted_logits_match_megatron_core(layout, local_state, reference_logits, tmp_path):
    state = local_state if layout == "local" else rename_layout(local_state, layout, ARCH)
    save_release(tmp_path / "ckpt", state, ARCH)
    report = convert_megatron_to_hf(tmp_path / "ckpt", tmp_path / "hf")  # the root with the tracker file
    assert report["layout"] == layout and report["iteration"] == 2499000
    assert report["architecture_from"] == "checkpoint args"
    assert (hf_logits(tmp_path / "hf") - reference_logits).abs().max().item() < 1e-4


def test_untied_output_layer_converts_with_parity(tmp_path):
    arch = Architecture(**{**ARCH.__dict__, "tied": False})
    state = megatron_state(arch, seed=1)
    assert "output_layer.weight" in state
    save_release(tmp_path / "ckpt", state, arch)
    convert_megatron_to_hf(tmp_path / "ckpt" / "iter_2499000", tmp_path / "hf")
    assert not LlamaConfig.from_pretrained(tmp_path / "hf").tie_word_embeddings
    assert (hf_logits(tmp_path / "hf") - megatron_logits(state, arch, TOKENS)).abs().max().item() < 1e-4


def test_a_plain_qkv_split_would_fail_parity(local_state, reference_logits, tmp_path):
    """The test can fail: splitting linear_qkv as [q; k; v] gives different logits."""
    weights = megatron_to_hf(local_state, ARCH, "local")
    for i in range(ARCH.num_layers):
        qkv = local_state[f"decoder.layers.{i}.self_attention.linear_qkv.weight"]
        q, k, v = qkv.split([96, 32, 32], dim=0)
        weights.update({f"model.layers.{i}.self_attn.{n}_proj.weight": t for n, t in zip("qkv", (q, k, v))})
    model = LlamaForCausalLM(ARCH.hf_config(torch.float32))
    model.load_state_dict(weights, strict=False)
    model.tie_weights()
    with torch.no_grad():
        assert (model(TOKENS).logits - reference_logits).abs().max().item() > 1e-2


def test_hf_to_megatron_to_hf_is_bit_exact(tmp_path):
    torch.manual_seed(0)
    original = LlamaForCausalLM(ARCH.hf_config(torch.float32))
    original.save_pretrained(tmp_path / "hf")
    convert_hf_to_megatron(tmp_path / "hf", tmp_path / "megatron", iteration=5)
    assert (tmp_path / "megatron" / "latest_checkpointed_iteration.txt").read_text() == "5"
    convert_megatron_to_hf(tmp_path / "megatron", tmp_path / "back")
    before, after = load_file(tmp_path / "hf" / "model.safetensors"), load_file(tmp_path / "back" / "model.safetensors")
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_megatron_to_hf_to_megatron_restores_the_source_tensors(local_state, tmp_path):
    save_release(tmp_path / "ckpt", local_state, ARCH)
    convert_megatron_to_hf(tmp_path / "ckpt", tmp_path / "hf")
    convert_hf_to_megatron(tmp_path / "hf", tmp_path / "again")
    again = load_checkpoint(tmp_path / "again").state_dict
    assert again.keys() == local_state.keys()
    assert all(torch.equal(again[k], local_state[k]) for k in local_state)


@pytest.mark.parametrize(
    "damage, expected",
    [
        (lambda s: s.pop("decoder.layers.1.mlp.linear_fc2.weight"), "missing tensor decoder.layers.1.mlp.linear_fc2"),
        (lambda s: s.update({"decoder.layers.0.self_attention.extra.weight": torch.zeros(3)}),
         "does not map: decoder.layers.0.self_attention.extra.weight"),
        (lambda s: s.update({"decoder.layers.0.self_attention.linear_qkv.weight": torch.zeros(96 * 3, 96)}),
         r"shape mismatch for decoder.layers.0.self_attention.linear_qkv.weight: expected \(160, 96\), found \(288, 96\)"),
    ],
    ids=["missing", "unknown", "shape"],
)
def test_bad_tensors_are_listed_and_nothing_is_written(damage, expected, local_state, tmp_path):
    state = dict(local_state)
    damage(state)
    save_release(tmp_path / "ckpt", state, ARCH)
    with pytest.raises(ConversionError, match=expected):
        convert_megatron_to_hf(tmp_path / "ckpt", tmp_path / "hf")
    assert not (tmp_path / "hf").exists() and not list(tmp_path.glob(".hf.tmp-*"))


def test_truncated_file_is_a_clear_error_and_nothing_is_written(local_state, tmp_path):
    target = save_release(tmp_path / "ckpt", local_state, ARCH)
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    with pytest.raises(ConversionError, match="truncated"):
        convert_megatron_to_hf(target, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_checkpoint_without_args_needs_a_variant(local_state, tmp_path):
    target = save_release(tmp_path / "ckpt", local_state, ARCH, with_args=False)
    with pytest.raises(ConversionError, match="pass --variant"):
        convert_megatron_to_hf(target, tmp_path / "hf")


def test_megatron_classes_in_args_load_without_importing_megatron(local_state, tmp_path):
    target = save_release(tmp_path / "ckpt", local_state, ARCH)
    args = load_checkpoint(target).args
    assert args.num_query_groups == 2
    assert type(args.attn_mask_type).__module__ == "align_proxy.models.megatron"  # a stub, not Megatron's enum


def test_cli_convert_with_verify_prints_the_logit_difference(local_state, tmp_path, capsys):
    save_release(tmp_path / "ckpt", local_state, ARCH)
    assert cli(["convert", str(tmp_path / "ckpt"), str(tmp_path / "hf"), "--verify"]) == 0
    out = capsys.readouterr().out
    assert "largest logit difference against megatron-core" in out
    difference = float(out.rsplit(":", 1)[1])
    assert difference < 1e-4
    assert json.loads((tmp_path / "hf" / "conversion.json").read_text())["parameters"] > 0
    assert cli(["convert", str(tmp_path / "ckpt"), str(tmp_path / "hf")]) == 2  # never overwrites


def test_converted_model_trains_under_the_dpo_recipe_unchanged(local_state, tmp_path):
    save_release(tmp_path / "ckpt", local_state, ARCH)
    build_tokenizer().save_pretrained(tmp_path / "tokenizer")  # 104 tokens fit the 128-row embedding
    convert_megatron_to_hf(tmp_path / "ckpt", tmp_path / "hf", tokenizer=str(tmp_path / "tokenizer"))
    dpo = load_recipe("dpo")
    args = recipe_parser("dpo").parse_args_and_config(
        ["--config", "recipes/configs/dpo_ladder_cpu.yaml", "--model_name_or_path", str(tmp_path / "hf"),
         "--output_dir", str(tmp_path / "dpo"), "--max_steps", "3", "--builtin_train_size", "64",
         "--eval_size", "10"]
    )
    assert dpo.main(*args).train.global_step == 3
    assert LlamaForCausalLM.from_pretrained(tmp_path / "dpo").num_parameters() > 0
