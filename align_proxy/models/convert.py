"""Megatron-LM <-> Hugging Face conversion for Llama-style GPT models (the CLIMB proxies).

Three Megatron layouts are read: megatron-core's local spec, the Transformer-Engine spec (norms
fused into `linear_qkv` / `linear_fc1`) and the CLIMB release's single-expert MoE naming
(`moe.experts.0.{gate,up,down}_proj`). The one trap: `linear_qkv` for grouped-query attention is
laid out per query group, `[groups, (heads_per_group + 2) * head_dim, hidden]` (that group's q
rows, then its k, then its v), not `[q; k; v]`. Every tensor must be accounted for: a missing,
unknown or mis-shaped tensor is an error listing the keys, and nothing is written.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from align_proxy.models.climb import CLIMB
from align_proxy.models.megatron import ConversionError, load_checkpoint, save_checkpoint

EMBEDDING = "embedding.word_embeddings.weight"
FINAL_NORM = "decoder.final_layernorm.weight"
OUTPUT_LAYER = "output_layer.weight"

# Per-layer tensor names of each layout ({i} is the layer). `fc1` is gate and up stacked.
LAYOUTS: dict[str, dict[str, str]] = {
    "local": {
        "input_norm": "decoder.layers.{i}.input_layernorm.weight",
        "qkv": "decoder.layers.{i}.self_attention.linear_qkv.weight",
        "proj": "decoder.layers.{i}.self_attention.linear_proj.weight",
        "mlp_norm": "decoder.layers.{i}.pre_mlp_layernorm.weight",
        "fc1": "decoder.layers.{i}.mlp.linear_fc1.weight",
        "fc2": "decoder.layers.{i}.mlp.linear_fc2.weight",
    },
    "te": {
        "input_norm": "decoder.layers.{i}.self_attention.linear_qkv.layer_norm_weight",
        "qkv": "decoder.layers.{i}.self_attention.linear_qkv.weight",
        "proj": "decoder.layers.{i}.self_attention.linear_proj.weight",
        "mlp_norm": "decoder.layers.{i}.mlp.linear_fc1.layer_norm_weight",
        "fc1": "decoder.layers.{i}.mlp.linear_fc1.weight",
        "fc2": "decoder.layers.{i}.mlp.linear_fc2.weight",
    },
    "release": {
        "input_norm": "decoder.layers.{i}.input_layernorm.weight",
        "qkv": "decoder.layers.{i}.self_attention.linear_qkv.weight",
        "proj": "decoder.layers.{i}.self_attention.linear_proj.weight",
        "mlp_norm": "decoder.layers.{i}.pre_mlp_layernorm.weight",
        "gate": "decoder.layers.{i}.mlp.moe.experts.0.gate_proj.weight",
        "up": "decoder.layers.{i}.mlp.moe.experts.0.up_proj.weight",
        "down": "decoder.layers.{i}.mlp.moe.experts.0.down_proj.weight",
    },
}


@dataclass(frozen=True)
class Architecture:
    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    num_attention_heads: int
    num_query_groups: int
    head_dim: int
    vocab_size: int
    tied: bool
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_positions: int = 4096

    @property
    def heads_per_group(self) -> int:
        return self.num_attention_heads // self.num_query_groups

    def hf_config(self, dtype: torch.dtype) -> LlamaConfig:
        return LlamaConfig(
            vocab_size=self.vocab_size, hidden_size=self.hidden_size, intermediate_size=self.ffn_hidden_size,
            num_hidden_layers=self.num_layers, num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_query_groups, head_dim=self.head_dim, rms_norm_eps=self.norm_eps,
            rope_theta=self.rope_theta, max_position_embeddings=self.max_positions,
            tie_word_embeddings=self.tied, attention_bias=False, mlp_bias=False, hidden_act="silu",
            dtype=dtype,
        )

    def megatron_args(self) -> argparse.Namespace:
        """The Megatron-LM argument names a training run reads back."""
        return argparse.Namespace(
            num_layers=self.num_layers, hidden_size=self.hidden_size, ffn_hidden_size=self.ffn_hidden_size,
            num_attention_heads=self.num_attention_heads, group_query_attention=True,
            num_query_groups=self.num_query_groups, kv_channels=self.head_dim, padded_vocab_size=self.vocab_size,
            untie_embeddings_and_output_weights=not self.tied, normalization="RMSNorm", swiglu=True,
            norm_epsilon=self.norm_eps, rotary_base=self.rope_theta, position_embedding_type="rope",
            max_position_embeddings=self.max_positions, add_bias_linear=False,
            tensor_model_parallel_size=1, pipeline_model_parallel_size=1,
        )

    @classmethod
    def from_hf(cls, config: LlamaConfig) -> Architecture:
        return cls(config.num_hidden_layers, config.hidden_size, config.intermediate_size,
                   config.num_attention_heads, config.num_key_value_heads,
                   getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads,
                   config.vocab_size, config.tie_word_embeddings, config.rms_norm_eps,
                   config.rope_parameters["rope_theta"] if getattr(config, "rope_parameters", None)
                   else getattr(config, "rope_theta", 10000.0),
                   config.max_position_embeddings)


def detect_layout(state: dict[str, torch.Tensor]) -> str:
    if any(k.endswith("linear_qkv.layer_norm_weight") for k in state):
        return "te"
    if any(".moe.experts.0." in k for k in state):
        return "release"
    return "local"


def _count_layers(state: dict[str, torch.Tensor]) -> int:
    layers = {int(k.split(".")[2]) for k in state if k.startswith("decoder.layers.")}
    if layers != set(range(len(layers))):
        raise ConversionError(f"layer indices are not contiguous: found {sorted(layers)}")
    return len(layers)


def infer_architecture(state: dict[str, torch.Tensor], args: object | None, variant: str | None) -> Architecture:
    """From the checkpoint's own `args` when present, else from the named variant's shapes;
    vocabulary and tying always from the tensors themselves."""
    if EMBEDDING not in state:
        raise ConversionError(f"missing tensor {EMBEDDING}: not a GPT checkpoint this converter knows")
    vocab, hidden = state[EMBEDDING].shape
    tied = OUTPUT_LAYER not in state
    layers = _count_layers(state)
    if args is not None and getattr(args, "num_layers", None):
        heads = args.num_attention_heads
        groups = args.num_query_groups if getattr(args, "group_query_attention", False) else heads
        return Architecture(
            num_layers=args.num_layers, hidden_size=args.hidden_size, ffn_hidden_size=args.ffn_hidden_size,
            num_attention_heads=heads, num_query_groups=groups,
            head_dim=getattr(args, "kv_channels", None) or args.hidden_size // heads, vocab_size=vocab, tied=tied,
            norm_eps=getattr(args, "norm_epsilon", None) or getattr(args, "layernorm_epsilon", 1e-5),
            rope_theta=float(getattr(args, "rotary_base", 10000) or 10000),
            max_positions=getattr(args, "max_position_embeddings", None) or 4096,
        )
    if variant is None:
        raise ConversionError("the checkpoint has no `args`, so its head counts are unknown: pass --variant "
                              "62m or 350m")
    matches = [v for v in CLIMB.values() if v.variant == variant]
    if not matches:
        raise ConversionError(f"unknown variant {variant!r}: choose one of {', '.join(v.variant for v in CLIMB.values())}")
    config = matches[0].config()
    arch = Architecture.from_hf(config)
    return Architecture(**{**asdict(arch), "vocab_size": vocab, "tied": tied, "num_layers": layers,
                           "hidden_size": hidden})


def _take(state, key, shape, used, problems) -> torch.Tensor | None:
    if key not in state:
        problems.append(f"missing tensor {key}")
        return None
    used.add(key)
    tensor = state[key]
    if tuple(tensor.shape) != tuple(shape):
        problems.append(f"shape mismatch for {key}: expected {tuple(shape)}, found {tuple(tensor.shape)}")
        return None
    return tensor


def _is_bookkeeping(key: str) -> bool:
    """Non-weights some Megatron versions save: TE's `_extra_state` and RoPE's recomputable `inv_freq`."""
    return key.endswith(("_extra_state", "inv_freq"))


def megatron_to_hf(state: dict[str, torch.Tensor], arch: Architecture, layout: str) -> dict[str, torch.Tensor]:
    """Map a Megatron state dict onto `LlamaForCausalLM` names, splitting the grouped QKV."""
    names, used, problems, out = LAYOUTS[layout], set(), [], {}
    h, d, g, hpg, f = arch.hidden_size, arch.head_dim, arch.num_query_groups, arch.heads_per_group, arch.ffn_hidden_size
    if arch.num_attention_heads % arch.num_query_groups:
        raise ConversionError(f"{arch.num_attention_heads} heads do not divide into {g} query groups")
    out["model.embed_tokens.weight"] = _take(state, EMBEDDING, (arch.vocab_size, h), used, problems)
    out["model.norm.weight"] = _take(state, FINAL_NORM, (h,), used, problems)
    if not arch.tied:
        out["lm_head.weight"] = _take(state, OUTPUT_LAYER, (arch.vocab_size, h), used, problems)
    for i in range(arch.num_layers):
        key = {name: pattern.format(i=i) for name, pattern in names.items()}
        hf = f"model.layers.{i}."
        out[hf + "input_layernorm.weight"] = _take(state, key["input_norm"], (h,), used, problems)
        out[hf + "post_attention_layernorm.weight"] = _take(state, key["mlp_norm"], (h,), used, problems)
        out[hf + "self_attn.o_proj.weight"] = _take(state, key["proj"], (h, g * hpg * d), used, problems)
        qkv = _take(state, key["qkv"], (g * (hpg + 2) * d, h), used, problems)
        if qkv is not None:
            grouped = qkv.view(g, hpg + 2, d, h)  # per group: hpg query heads, then one k, then one v
            out[hf + "self_attn.q_proj.weight"] = grouped[:, :hpg].reshape(g * hpg * d, h)
            out[hf + "self_attn.k_proj.weight"] = grouped[:, hpg].reshape(g * d, h)
            out[hf + "self_attn.v_proj.weight"] = grouped[:, hpg + 1].reshape(g * d, h)
        if layout == "release":
            out[hf + "mlp.gate_proj.weight"] = _take(state, key["gate"], (f, h), used, problems)
            out[hf + "mlp.up_proj.weight"] = _take(state, key["up"], (f, h), used, problems)
            out[hf + "mlp.down_proj.weight"] = _take(state, key["down"], (h, f), used, problems)
        else:
            fc1 = _take(state, key["fc1"], (2 * f, h), used, problems)
            if fc1 is not None:
                out[hf + "mlp.gate_proj.weight"], out[hf + "mlp.up_proj.weight"] = fc1.chunk(2, dim=0)
            out[hf + "mlp.down_proj.weight"] = _take(state, key["fc2"], (h, f), used, problems)
    unknown = sorted(k for k in state if k not in used and not _is_bookkeeping(k))
    if unknown:
        problems.append(f"{len(unknown)} tensor(s) this {layout!r} layout does not map: {', '.join(unknown)}")
    if problems:
        raise ConversionError("cannot convert the checkpoint:\n  " + "\n  ".join(problems))
    return {k: v.contiguous() for k, v in out.items()}


def hf_to_megatron(state: dict[str, torch.Tensor], arch: Architecture) -> dict[str, torch.Tensor]:
    """The inverse map, into megatron-core's local-spec names (QKV re-grouped per query group)."""
    names = LAYOUTS["local"]
    h, d, g, hpg = arch.hidden_size, arch.head_dim, arch.num_query_groups, arch.heads_per_group
    out = {EMBEDDING: state["model.embed_tokens.weight"], FINAL_NORM: state["model.norm.weight"]}
    if not arch.tied:
        out[OUTPUT_LAYER] = state["lm_head.weight"]
    for i in range(arch.num_layers):
        key = {name: pattern.format(i=i) for name, pattern in names.items()}
        hf = f"model.layers.{i}."
        q = state[hf + "self_attn.q_proj.weight"].view(g, hpg, d, h)
        k = state[hf + "self_attn.k_proj.weight"].view(g, 1, d, h)
        v = state[hf + "self_attn.v_proj.weight"].view(g, 1, d, h)
        out[key["qkv"]] = torch.cat([q, k, v], dim=1).reshape(g * (hpg + 2) * d, h)
        out[key["proj"]] = state[hf + "self_attn.o_proj.weight"]
        out[key["input_norm"]] = state[hf + "input_layernorm.weight"]
        out[key["mlp_norm"]] = state[hf + "post_attention_layernorm.weight"]
        out[key["fc1"]] = torch.cat([state[hf + "mlp.gate_proj.weight"], state[hf + "mlp.up_proj.weight"]], dim=0)
        out[key["fc2"]] = state[hf + "mlp.down_proj.weight"]
    return {k: v.contiguous() for k, v in out.items()}


def to_local_layout(state: dict[str, torch.Tensor], layout: str, num_layers: int) -> dict[str, torch.Tensor]:
    """Rename a TE or release state dict into local-spec names (norm keys renamed, the release's
    gate/up stacked), touching no QKV tensor: what megatron-core's local GPTModel loads."""
    if layout == "local":
        return {k: v for k, v in state.items() if not _is_bookkeeping(k)}
    source, local = LAYOUTS[layout], LAYOUTS["local"]
    out = {k: v for k, v in state.items() if k in (EMBEDDING, FINAL_NORM, OUTPUT_LAYER)}
    for i in range(num_layers):
        key = {name: pattern.format(i=i) for name, pattern in source.items()}
        for name in ("input_norm", "mlp_norm", "qkv", "proj"):
            out[local[name].format(i=i)] = state[key[name]]
        if layout == "release":
            out[local["fc1"].format(i=i)] = torch.cat([state[key["gate"]], state[key["up"]]], dim=0)
            out[local["fc2"].format(i=i)] = state[key["down"]]
        else:
            out[local["fc1"].format(i=i)] = state[key["fc1"]]
            out[local["fc2"].format(i=i)] = state[key["fc2"]]
    return out


def _write_atomically(out_dir: Path, write) -> None:
    """Run `write(tmp_dir)` and rename into place; on any failure nothing is left at `out_dir`."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ConversionError(f"{out_dir} exists and is not empty: choose a new output directory")
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        write(tmp)
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def convert_megatron_to_hf(src: Path, out_dir: Path, tokenizer: str | None = None,
                           variant: str | None = None) -> dict:
    """Convert a Megatron checkpoint into a Hugging Face `LlamaForCausalLM` directory; return the
    conversion report (also written as `conversion.json`)."""
    checkpoint = load_checkpoint(src)
    arch = infer_architecture(checkpoint.state_dict, checkpoint.args, variant)
    layout = detect_layout(checkpoint.state_dict)
    weights = megatron_to_hf(checkpoint.state_dict, arch, layout)
    dtype = checkpoint.state_dict[EMBEDDING].dtype
    with torch.device("meta"):
        model = LlamaForCausalLM(arch.hf_config(dtype))
    if arch.tied:  # strict loading still checks every other name; tie_weights re-points the head
        weights = {**weights, "lm_head.weight": weights["model.embed_tokens.weight"]}
    model.load_state_dict(weights, strict=True, assign=True)
    if arch.tied:
        model.tie_weights()
    report = {
        "source": str(checkpoint.path),
        "iteration": checkpoint.iteration,
        "layout": layout,
        "architecture_from": "checkpoint args" if checkpoint.args is not None else f"variant {variant}",
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": str(dtype).removeprefix("torch."),
        "architecture": asdict(arch),
        "tokenizer": tokenizer,
    }

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            from transformers import AutoTokenizer

            AutoTokenizer.from_pretrained(tokenizer).save_pretrained(tmp)
        (tmp / "conversion.json").write_text(json.dumps(report, indent=2))

    _write_atomically(Path(out_dir), write)
    return report


def convert_hf_to_megatron(src: Path, out_dir: Path, iteration: int = 0) -> dict:
    """Write a Hugging Face Llama model as a megatron-core local-spec checkpoint."""
    model = LlamaForCausalLM.from_pretrained(src, dtype="auto")
    arch = Architecture.from_hf(model.config)
    state = hf_to_megatron({k: v.detach() for k, v in model.state_dict().items()}, arch)
    report = {"source": str(src), "iteration": iteration, "layout": "local", "parameters": model.num_parameters(),
              "architecture": asdict(arch)}
    _write_atomically(Path(out_dir), lambda tmp: save_checkpoint(state, arch.megatron_args(), tmp, iteration))
    return report
