"""Padding-free training for any trainer: a padded batch runs through the transformer as one packed row.

TRL 1.16 packs SFT data itself (`packing_strategy="bfd"`: one row, `position_ids` restarting at each example,
`cu_seq_lens_*` for the attention), but disables `padding_free` for DPO and has none for reward models. Here
the packing happens inside the model instead, so every trainer's own collator, loss and metrics stay as they
are: `pack_backbone` makes the backbone (the `LlamaModel` under a causal-LM or sequence-classification head)
take a right-padded batch, drop the padding, run the real tokens as one row whose positions restart at every
example, and scatter the hidden states back to the padded shape the head and the loss expect. Pad positions
come back as zeros, which no loss reads (labels are -100 there; a reward model pools the last real token).

Attention must not cross examples in a packed row. `VARLEN_ATTENTION` (registered with transformers below)
runs each example as its own causal sequence: PyTorch's FlashAttention varlen kernel on a GPU in bf16/fp16,
and a per-example `scaled_dot_product_attention` elsewhere (CPU, fp32), which is exact and what the tests
compare against padded batches. transformers' `sdpa` also respects packed `position_ids` (a block-diagonal
mask), but builds that mask densely over the whole row: correct, yet slower than padding on a GPU.
"""

from __future__ import annotations

import inspect
import types

import torch
import torch.nn.functional as F

VARLEN_ATTENTION = "align_proxy_varlen"
# Attention implementations that run a packed row (cu_seq_lens / restarting position_ids) without a dense mask.
VARLEN_IMPLEMENTATIONS = (VARLEN_ATTENTION, "flash_attention_2", "flash_attention_3")


def backbone_of(model):
    """The transformer backbone (the `LlamaModel`) under a causal-LM or sequence-classification head, through PEFT."""
    core = model.get_base_model() if hasattr(model, "get_base_model") else model  # a PEFT model's base
    return getattr(core, "base_model", core)


def pack_backbone(model) -> bool:
    """Make `model`'s transformer backbone padding-free for right-padded training batches; returns whether it did.

    Installed on the instance (not the class), as a method, so the trainer's later wrappers (TRL's fused LM head,
    accelerate's regional compilation, which copies the module) keep calling it. Inputs it cannot pack (a KV
    cache, left padding, a single row, explicit positions) run through the original forward unchanged.
    """
    backbone = backbone_of(model)
    if getattr(backbone, "_align_proxy_padding_free", False):
        return True
    if "forward" in backbone.__dict__:  # someone else already wraps this instance: do not stack on it
        return False
    backbone.forward = types.MethodType(_padding_free_forward, backbone)
    backbone._align_proxy_padding_free = True
    return True


def bound_max_length(model, bound: int) -> None:
    """Hand the decoder layers one constant `max_length_q`/`max_length_k` (`bound`, or the batch's longest when a
    batch exceeds it) instead of each batch's longest sequence.

    FlashAttention's varlen kernels need only an upper bound (it sizes their grid), while a compiled layer that
    reads a changing Python int recompiles, forward and backward, at the first batch whose longest sequence differs.
    A pre-hook on the backbone (never compiled) sees TRL's packed SFT batches and `pack_backbone`'s rows alike."""
    backbone = backbone_of(model)
    backbone._align_proxy_max_length = bound

    def hook(module, args, kwargs):
        for key in ("max_length_q", "max_length_k"):
            if isinstance(kwargs.get(key), int):
                kwargs[key] = max(bound, kwargs[key])
        return args, kwargs

    backbone.register_forward_pre_hook(hook, with_kwargs=True)


def _padding_free_forward(self, input_ids=None, attention_mask=None, position_ids=None, **kwargs):
    packed = _pack(input_ids, attention_mask, position_ids, kwargs)
    if packed is None:
        return type(self).forward(self, input_ids=input_ids, attention_mask=attention_mask,
                                  position_ids=position_ids, **kwargs)
    row, positions, cu_seq_lens, max_length, mask = packed
    max_length = max(max_length, getattr(self, "_align_proxy_max_length", 0))  # see bound_max_length
    # No KV cache: with one, transformers stops reading restarting positions as separate sequences.
    kwargs["use_cache"] = False
    out = type(self).forward(self, input_ids=row, attention_mask=None, position_ids=positions,
                             cu_seq_lens_q=cu_seq_lens, cu_seq_lens_k=cu_seq_lens,
                             max_length_q=max_length, max_length_k=max_length, **kwargs)
    hidden = out.last_hidden_state[0]
    # masked_scatter keeps the graph: gradients reach exactly the packed positions.
    out.last_hidden_state = hidden.new_zeros(*mask.shape, hidden.size(-1)).masked_scatter(mask[..., None], hidden)
    return out


def _pack(input_ids, attention_mask, position_ids, kwargs):
    """(row, positions, cu_seq_lens, max_length, mask) for a right-padded training batch, else None."""
    if not (isinstance(input_ids, torch.Tensor) and isinstance(attention_mask, torch.Tensor)):
        return None
    if input_ids.dim() != 2 or attention_mask.shape != input_ids.shape or input_ids.size(0) < 2:
        return None
    if position_ids is not None or kwargs.get("inputs_embeds") is not None or kwargs.get("past_key_values") is not None:
        return None
    if kwargs.get("use_cache") or kwargs.get("output_hidden_states") or kwargs.get("output_attentions"):
        return None
    mask = attention_mask.bool()
    lengths = mask.sum(dim=1)
    steps = torch.arange(mask.size(1), device=mask.device)
    if not bool((lengths > 0).all()) or not torch.equal(mask, steps[None, :] < lengths[:, None]):
        return None  # an empty row or left padding: not this function's case
    positions = steps[None, :].expand_as(mask)[mask][None, :]
    cu_seq_lens = F.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
    return input_ids[mask][None, :], positions, cu_seq_lens, int(lengths.max()), mask


# --- attention: each example of a packed row as its own causal sequence -------------------------------------

def varlen_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """transformers' attention-function signature: query [B, Hq, T, D], key/value [B, Hkv, S, D] in; the output
    [B, T, Hq, D] and no weights out. A packed row (B = 1 with `cu_seq_lens_q` or restarting `position_ids`) runs
    per example; anything else (padded evaluation, cached generation) is plain causal SDPA with its padding."""
    cu_seq_lens = kwargs.get("cu_seq_lens_q")
    if cu_seq_lens is None and attention_mask is None and query.size(0) == 1 and query.size(2) == key.size(2):
        cu_seq_lens = _cu_seq_lens_from_positions(kwargs.get("position_ids"))
    if cu_seq_lens is None or attention_mask is not None or query.size(0) != 1 or query.size(2) != key.size(2):
        return _padded_sdpa(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    if dropout:
        raise ValueError(f"{VARLEN_ATTENTION} does not implement attention dropout; set attention_dropout to 0")
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # [T, H, D]
    scaling = q.size(-1) ** -0.5 if scaling is None else scaling
    if q.is_cuda and torch.is_autocast_enabled("cuda"):
        # RoPE promotes q and k to the fp32 residual stream's dtype; the kernel runs in the autocast dtype (as
        # transformers' flash path and SDPA under autocast do).
        dtype = torch.get_autocast_dtype("cuda")
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    if q.is_cuda and q.dtype in (torch.bfloat16, torch.float16) and _KERNEL is not None:
        max_length = kwargs.get("max_length_q") or int(cu_seq_lens.diff().max())
        out = _cuda_varlen(q, k, v, cu_seq_lens.to(q.device, torch.int32), max_length, scaling)
    else:
        out = _per_example_sdpa(q, k, v, cu_seq_lens, scaling)
    return out[None], None


def _cu_seq_lens_from_positions(position_ids):
    """Sequence boundaries of a packed row: every position 0 starts an example (as transformers' flash path reads
    them). None when the row is a single sequence."""
    if position_ids is None or position_ids.size(0) != 1:
        return None
    starts = (position_ids[0] == 0).nonzero().flatten()
    if starts.numel() <= 1:
        return None
    end = torch.tensor([position_ids.size(1)], device=starts.device)
    return torch.cat([starts, end]).to(torch.int32)


def _per_example_sdpa(q, k, v, cu_seq_lens, scaling):
    """Exact reference: causal SDPA over each example alone. Slow (a loop), used off the GPU kernel's path."""
    groups = q.size(1) // k.size(1)
    if groups > 1:  # grouped-query attention: each KV head serves `groups` consecutive query heads
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    bounds = cu_seq_lens.tolist()
    outputs = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        if end > start:
            qs, ks, vs = (t[start:end].transpose(0, 1)[None] for t in (q, k, v))
            outputs.append(F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scaling)[0].transpose(0, 1))
    return torch.cat(outputs)


def _load_kernel():
    """PyTorch's FlashAttention varlen entry point and its parameters (they changed between releases), or None.
    Read once at import, so a compiled attention never traces the lookup."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn, frozenset(inspect.signature(varlen_attn).parameters)


_KERNEL = _load_kernel()


def _cuda_varlen(q, k, v, cu_seq_lens, max_length, scaling):
    kernel, params = _KERNEL
    kwargs = {"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True}  # (-1, 0) is causal
    if "scale" in params:
        kwargs["scale"] = scaling
    elif abs(scaling - q.size(-1) ** -0.5) > 1e-9:
        raise ValueError("this PyTorch's varlen attention has no `scale` argument; the model needs a custom one")
    if q.size(1) != k.size(1):
        if "enable_gqa" in params:
            kwargs["enable_gqa"] = True
        else:
            groups = q.size(1) // k.size(1)
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()  # [T, H, D] rows, as the kernel reads them
    return kernel(q, k, v, cu_seq_lens, cu_seq_lens, max_length, max_length, **kwargs)


def _padded_sdpa(module, query, key, value, attention_mask, dropout, scaling, **kwargs):
    """transformers' SDPA, given the 4-D mask it expects (the registered mask function hands over the 2-D one)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if attention_mask is not None and attention_mask.dim() == 2:
        q_len, kv_len = query.size(2), key.size(2)
        causal = torch.ones(q_len, kv_len, dtype=torch.bool, device=query.device).tril(kv_len - q_len)
        attention_mask = causal[None, None] & attention_mask[:, None, None, -kv_len:].bool()
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                  **kwargs)


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

    AttentionInterface.register(VARLEN_ATTENTION, varlen_attention_forward)
    # The flash mask: the 2-D padding mask as is (None when there is none), never a dense [T, T] one.
    AttentionMaskInterface.register(VARLEN_ATTENTION, flash_attention_mask)


VARLEN_MIN_CAPABILITY = (8, 0)  # FlashAttention's varlen kernels (flash-attn 2 and PyTorch's) need Ampere or newer


def varlen_attention_available(cuda: bool, capability: tuple[int, int] | None = None) -> str | None:
    """The attention implementation a packed row should use on this machine, or None: FlashAttention 2 when the
    `flash_attn` package imports (transformers' own varlen path), else PyTorch's varlen kernel on a GPU; neither
    below compute capability 8.0. `capability`: the GPU's, read from the current device when not given."""
    if not cuda:
        return None
    capability = capability or torch.cuda.get_device_capability()
    if tuple(capability) < VARLEN_MIN_CAPABILITY:
        return None
    if flash_attn_importable():
        return "flash_attention_2"
    return VARLEN_ATTENTION if _KERNEL is not None else None


def flash_attn_importable() -> bool:
    """Whether `flash_attn` really imports. Its presence is not enough: a wheel built against another torch is found
    by `find_spec` and then fails with an undefined symbol inside `from_pretrained`."""
    try:
        import flash_attn  # noqa: F401
    except ModuleNotFoundError as err:
        if err.name == "flash_attn":
            return False  # not installed: nothing to say
        print(f"[align-proxy] flash_attn does not import ({err}); using PyTorch's varlen attention instead",
              flush=True)
        return False
    except Exception as err:  # noqa: BLE001 - ImportError, OSError or RuntimeError, depending on how the ABI differs
        print(f"[align-proxy] flash_attn is installed but does not import ({type(err).__name__}: "
              f"{str(err)[:160]}); using PyTorch's varlen attention instead", flush=True)
        return False
    return True


_register()
