"""The source model's own forward, through megatron-core on CPU, and `verify_conversion`, which
runs a converted model against it.

megatron-core (`pip install megatron-core==0.16.1`) builds a `GPTModel` from the local layer spec
and runs it on CPU after three patches (see shared PROXIES.md): RoPE asks for the current CUDA
device, the default causal mask is built on "cuda", and dropout forks a CUDA RNG tracker.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
import torch.nn.functional as F

from transformers import LlamaForCausalLM

from align_proxy.models.convert import Architecture, detect_layout, to_local_layout
from align_proxy.models.megatron import load_checkpoint


def megatron_available() -> bool:
    try:
        import megatron.core  # noqa: F401
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def cpu_megatron():
    """megatron-core's process groups (gloo, world size 1) and CPU patches, for the duration only:
    a process group left behind would make accelerate treat later training as distributed."""
    import torch.distributed as dist
    from megatron.core import parallel_state, tensor_parallel

    patched = torch.cuda.current_device
    torch.cuda.current_device = lambda: "cpu"  # RoPE moves inv_freq to "the current device"
    owns_group = not dist.is_initialized()
    if owns_group:  # an in-process store: one rank needs no socket (a fixed port clashed with a second process)
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    parallel_state.initialize_model_parallel(1, 1)
    tracker = tensor_parallel.random.get_cuda_rng_tracker()
    fork = tracker.fork
    tracker.fork = lambda *args, **kwargs: contextlib.nullcontext()  # dropout's CUDA RNG fork
    try:
        yield
    finally:
        tracker.fork = fork
        parallel_state.destroy_model_parallel()
        if owns_group:
            dist.destroy_process_group()
        torch.cuda.current_device = patched


def build_gpt_model(arch: Architecture):
    """A megatron-core GPTModel (local spec, RMSNorm, SwiGLU, RoPE, GQA) of this shape, in fp32.
    Call inside `cpu_megatron()`."""
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer.transformer_config import TransformerConfig

    config = TransformerConfig(
        num_layers=arch.num_layers, hidden_size=arch.hidden_size, ffn_hidden_size=arch.ffn_hidden_size,
        num_attention_heads=arch.num_attention_heads, num_query_groups=arch.num_query_groups,
        kv_channels=arch.head_dim, normalization="RMSNorm", layernorm_epsilon=arch.norm_eps,
        gated_linear_unit=True, activation_func=F.silu, add_bias_linear=False, hidden_dropout=0.0,
        attention_dropout=0.0, use_cpu_initialization=True, params_dtype=torch.float32,
        bias_activation_fusion=False, bias_dropout_fusion=False, apply_rope_fusion=False,
        masked_softmax_fusion=False, persist_layer_norm=False, gradient_accumulation_fusion=False,
    )
    return GPTModel(
        config=config, transformer_layer_spec=get_gpt_layer_local_spec(normalization="RMSNorm"),
        vocab_size=arch.vocab_size, max_sequence_length=arch.max_positions,
        share_embeddings_and_output_weights=arch.tied, position_embedding_type="rope",
        rotary_base=int(arch.rope_theta),
    )


@torch.no_grad()
def megatron_logits(local_state: dict[str, torch.Tensor], arch: Architecture, input_ids: torch.Tensor) -> torch.Tensor:
    """Logits of the checkpoint's weights (local-spec names) on `input_ids` [batch, seq], fp32."""
    with cpu_megatron():
        model = build_gpt_model(arch)
        missing, unexpected = model.load_state_dict({k: v.float() for k, v in local_state.items()}, strict=False)
        missing = [k for k in missing if not k.endswith("_extra_state")]
        if missing or unexpected:
            raise RuntimeError(f"megatron-core rejected the weights: missing {missing}, unexpected {unexpected}")
        model.eval()
        seq = input_ids.shape[1]
        positions = torch.arange(seq).unsqueeze(0).expand_as(input_ids)
        causal = torch.triu(torch.ones(1, 1, seq, seq, dtype=torch.bool), diagonal=1)  # True = masked
        return model(input_ids, positions, causal).float()


@torch.no_grad()
def verify_conversion(src: Path, hf_dir: Path, seq_len: int = 32, seed: int = 0) -> dict:
    """Run the converted model and, when megatron-core is importable, the source checkpoint on the
    same random tokens; report the largest absolute logit difference (fp32)."""
    checkpoint = load_checkpoint(src)
    model = LlamaForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    arch = Architecture.from_hf(model.config)
    input_ids = torch.randint(0, arch.vocab_size, (2, seq_len), generator=torch.Generator().manual_seed(seed))
    hf_logits = model(input_ids).logits.float()
    result = {"tokens": input_ids.numel(), "hf_logits_finite": bool(torch.isfinite(hf_logits).all()),
              "max_abs_logit_diff": None}
    if megatron_available():
        local = to_local_layout(checkpoint.state_dict, detect_layout(checkpoint.state_dict), arch.num_layers)
        reference = megatron_logits(local, arch, input_ids)
        result["max_abs_logit_diff"] = (hf_logits - reference).abs().max().item()
    return result
