"""Proxy-speed defaults: what keeps a GPU busy on a 62M-350M proxy, applied to a recipe's TRL config.

TRL's defaults suit 7B models: gradient checkpointing, padded batches, a reference model run beside the policy.
On a proxy they leave an H100 mostly idle (shared/bench/README.md). `plan_proxy_speed` decides, without writing
anything, better defaults for the machine the run is on, and `SpeedPlan.apply` (called by the recipe's
`run.apply_speed_plan()`, which prints `SpeedPlan.diff`: each setting, before -> after, and why) sets them; never a
key the user set in the `--config` YAML or on the command line (`align_proxy.recipe_arguments.RecipeParser`
records those), and never one that changes the loss a batch gets (tests/test_speed.py holds the fast and plain
paths to the same loss on the same batch). One exception, said in the log and the record (`overridden`): a
config's SFT packing on a GPU without a varlen attention kernel, which would run rows of max_length tokens under a
dense mask. SFT packing changes what a step holds (rows of max_length tokens, not that many examples), and says
so; when no batch size is set, the micro-batch is sized to this run's share of GPU memory with the accumulation
that keeps the global batch. It returns a `SpeedPlan`: what
it applied, what was already so, what it skipped and why, written to metrics.json (`speed`) and, with each change
as a before/after pair, to run_config.yaml (`speed_plan`).
`--proxy_speed false` runs TRL's defaults.

On CPU only gradient checkpointing is touched (off when the model fits: the same numbers, faster); every other
choice is a GPU one, so CPU runs, the README's figures among them, stay bit-identical.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

import torch
from transformers import TrainerCallback

from align_proxy import padding_free
from align_proxy.kinds import RecipeKind, recipe_kind
from align_proxy.lifetime import CELLS_PER_GPU
# transformers 5 renamed gradient checkpointing; the old name is an alias kept equal to the new one.
ALIASES = {"gradient_checkpointing": "activation_checkpointing", "activation_checkpointing": "gradient_checkpointing"}
USER_SET = "set in the config or on the command line"
MAX_MICRO_BATCH = 64  # rows; beyond this a proxy's step is long enough that launch overhead no longer matters
# Compiled layers share one code object (nn.Module._call_impl), hence one recompile limit (torch's default: 8), and
# each mode a run enters is an entry of its own: grad and no-grad (DPO's precompute, evaluation), train and eval,
# LoRA adapters on and off, batch size 1 against more (dynamic shapes still specialise 1). Past the limit torch runs
# the layers eagerly without a word, so it is raised to hold every combination with room.
RECOMPILE_LIMIT = 64
# Defaults that are not config fields: what the trainer callback does to the model itself.
MECHANISMS = ("padding_free_batches", "compiled_layers")


@dataclass(frozen=True)
class Device:
    """What the defaults depend on, read once; tests pass their own (a GPU described on a CPU machine)."""

    cuda: bool
    name: str
    total_bytes: int  # memory of the accelerator, or of the machine on CPU
    free_bytes: int
    bf16: bool = False
    liger: bool = False  # liger-kernel importable
    varlen_attention: str | None = None  # attention that runs a packed row without a dense mask
    cpus: int = 1
    local_processes: int = 1  # processes of this launch sharing the machine's cores
    deepspeed: bool = False
    cells_per_gpu: int = 1  # study cells that may run on this GPU at once (set by the study runner)

    @classmethod
    def detect(cls, use_cpu: bool = False, deepspeed: bool = False) -> Device:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        if torch.cuda.is_available() and not use_cpu:
            from transformers.utils import is_liger_kernel_available

            free, total = torch.cuda.mem_get_info()
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                # Every rank must choose the same micro-batch (or their epochs differ in steps): the tightest decides.
                tightest = torch.tensor([free], dtype=torch.int64, device="cuda")
                torch.distributed.all_reduce(tightest, op=torch.distributed.ReduceOp.MIN)
                free = int(tightest)
            return cls(True, torch.cuda.get_device_name(), total, free, torch.cuda.is_bf16_supported(),
                       is_liger_kernel_available(), padding_free.varlen_attention_available(True), cpus, local,
                       deepspeed, max(1, int(os.environ.get(CELLS_PER_GPU, "1"))))
        page = os.sysconf("SC_PAGE_SIZE")
        return cls(False, "cpu", os.sysconf("SC_PHYS_PAGES") * page, os.sysconf("SC_AVPHYS_PAGES") * page,
                   cpus=cpus, local_processes=local, deepspeed=deepspeed)

    def describe(self) -> str:
        shared = f", shared by up to {self.cells_per_gpu} cells" if self.cells_per_gpu > 1 else ""
        return f"{self.name} ({self.total_bytes / 2**30:.0f} GiB, {self.free_bytes / 2**30:.0f} GiB free{shared})"

    def share_bytes(self) -> int:
        """This run's memory: what is free, and never more than its share of the GPU among the cells on it (the
        first of several cells sees them all free, and would otherwise take all of it)."""
        return int(min(self.free_bytes, self.total_bytes / self.cells_per_gpu))


@dataclass(frozen=True)
class ModelShape:
    """The few numbers a memory estimate needs, from the model's config (no weights read)."""

    parameters: int
    layers: int
    hidden: int
    intermediate: int
    kv_dim: int

    @classmethod
    def from_config(cls, config, parameters: int) -> ModelShape:
        config = config.get_text_config() if hasattr(config, "get_text_config") else config
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        return cls(parameters, config.num_hidden_layers, config.hidden_size,
                   getattr(config, "intermediate_size", 4 * config.hidden_size), kv_heads * head_dim)

    def activation_bytes_per_token(self) -> int:
        # What a decoder layer keeps for backward under bf16 autocast without recomputation (the bf16 inputs of
        # every matmul, fp32 norm inputs and outputs, attention q/k/v/out, the SwiGLU intermediates): about
        # 36h + 10f + 4kv bytes; the LM head adds little (TRL 1.16 scores completions in chunks). 25% margin.
        return int(1.25 * self.layers * (36 * self.hidden + 10 * self.intermediate + 4 * self.kv_dim))

    def static_bytes(self, reference_model: bool) -> int:
        # fp32 weights, gradients and AdamW's two moments; a DPO reference model run beside the policy: its weights.
        return self.parameters * (16 + (4 if reference_model else 0))


@dataclass
class SpeedPlan:
    """The defaults one run got, as written to metrics.json under `speed` (`record`) and to run_config.yaml under
    `speed_plan` (`config_section`)."""

    enabled: bool
    device: str = ""
    applied: dict = field(default_factory=dict)  # key -> {"value", "was", "why"}
    unchanged: dict = field(default_factory=dict)  # key -> why (TRL's default is already the fast value)
    skipped: dict = field(default_factory=dict)  # key -> why not
    overridden: dict = field(default_factory=dict)  # key the user set that this plan undid -> why (see `applied`)
    note: str | None = None

    @property
    def padding_free_batches(self) -> bool:
        return "padding_free_batches" in self.applied

    @property
    def compiled_layers(self) -> bool:
        return "compiled_layers" in self.applied

    def record(self) -> dict:
        plain = json.loads(json.dumps(dataclasses.asdict(self), default=str))  # enums and dtypes as text
        return {k: v for k, v in plain.items() if v not in (None, {}, "")}

    def apply(self, training_args, model_args) -> None:
        """Write the planned values into the configs (mechanisms are the callback's: see `callbacks`)."""
        for key, change in self.applied.items():
            if key not in MECHANISMS:
                _set(model_args if key == "attn_implementation" else training_args, key, change["value"])

    def callbacks(self) -> list:
        wanted = self.padding_free_batches or self.compiled_layers
        return [ModelSpeedCallback(self.padding_free_batches, self.compiled_layers)] if wanted else []

    def changes(self) -> dict:
        """Each setting this plan changes, as plain values: {setting: {"before", "after", "why"}}. A mechanism
        (padding-free batches, compiled layers) is not a config field: it goes from off (False) to on."""
        changes = {key: {"before": change.get("was", False), "after": change["value"], "why": change["why"]}
                   for key, change in self.applied.items()}
        return json.loads(json.dumps(changes, default=str))  # enums and dtypes as text, as in `record`

    def diff(self) -> str:
        """What the run's log shows when it starts: one line per changed setting, `setting: before -> after
        (why)`, then the settings it left alone because the user set them."""
        if not self.enabled:
            return f"proxy speed: off ({self.note or '--proxy_speed false'})"
        changes = self.changes()
        lines = [f"proxy speed on {self.device}: {len(changes)} setting(s) changed (--proxy_speed false keeps "
                 f"the config as written)"]
        for key, change in changes.items():
            undid = ", UNDID yours" if key in self.overridden else ""
            lines.append(f"  {key}: {change['before']} -> {change['after']}{undid} ({change['why']})")
        kept = ", ".join(k for k, why in self.skipped.items() if why == USER_SET)
        if kept:
            lines.append(f"  kept yours: {kept}")
        return "\n".join(lines)

    def config_section(self) -> dict:
        """run_config.yaml's `speed_plan`: the changes as before/after pairs, and what else the plan decided."""
        rest = {k: v for k, v in self.record().items() if k != "applied"}
        return {**rest, "changed": self.changes()} if self.enabled else rest


class ModelSpeedCallback(TrainerCallback):
    """What the plan does to the trainer's model itself, at the end of `Trainer.__init__` (after TRL built the
    model, before TRL precomputes DPO reference log-probs with it and before training): padding-free batches, and
    `torch.compile` of each decoder layer in place.

    Compiling layers in place, rather than the trainer's `torch_compile` (the whole model, through accelerate),
    keeps TRL's fused LM head and the packing step eager (their data-dependent shapes would split one graph into
    many), and keeps one model object (accelerate's regional compilation copies the top modules, so TRL, which
    reads `self.model.training`, would log training metrics as evaluation ones).
    """

    def __init__(self, padding_free_batches: bool = True, compiled_layers: bool = False):
        self.padding_free_batches, self.compiled_layers = padding_free_batches, compiled_layers

    def on_init_end(self, args, state, control, model=None, **kwargs):
        if model is None:
            return
        if self.padding_free_batches and not padding_free.pack_backbone(model):
            print("[align-proxy] padding-free batches not installed: the backbone's forward is already wrapped",
                  flush=True)
        if self.compiled_layers:
            if not compile_layers(model):
                print("[align-proxy] decoder layers not compiled: no `layers` list found on the backbone", flush=True)
            elif getattr(args, "max_length", None):
                # TRL truncates every sequence to max_length: a bound for FlashAttention that never changes.
                padding_free.bound_max_length(model, args.max_length)


def compile_layers(model) -> bool:
    """`torch.compile` every decoder layer in place: one graph for the layer class, shared by all of them, with
    dynamic shapes from the first step (padding-free rows and padded batches differ in length every step: compiled
    static first, the second step would compile again, forward and backward)."""
    layers = getattr(padding_free.backbone_of(model), "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        return False
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    for layer in layers:
        layer.compile(dynamic=True)
    return True


def plan_proxy_speed(recipe: str | RecipeKind, script_args, training_args, model_args, parameters: int,
                     explicit: frozenset[str] | None, device: Device | None = None) -> SpeedPlan:
    """The proxy-speed defaults for this run, decided without changing anything: what to set (with the value it
    replaces and why), what is already so, and what is skipped and why. `explicit`: the keys the user set
    (`RecipeParser`); None when unknown, and then nothing is changed."""
    if not getattr(script_args, "proxy_speed", True):
        return SpeedPlan(False, note="--proxy_speed false: TRL's defaults")
    if explicit is None:
        return SpeedPlan(False, note="arguments not parsed by make_parser: which settings are the user's is "
                                     "unknown, so none was changed")
    kind = recipe if isinstance(recipe, RecipeKind) else recipe_kind(recipe)
    deepspeed = bool(training_args.deepspeed) or os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"
    device = device or Device.detect(training_args.use_cpu, deepspeed)
    shape = _model_shape(model_args.model_name_or_path, parameters)
    plan = SpeedPlan(True, device.describe() if device.cuda else "cpu")
    wanted = _decide(kind, training_args, model_args, explicit, device, shape, plan)
    for key, (value, why) in wanted.items():
        if key in MECHANISMS:
            plan.applied[key] = {"value": value, "why": why}
            continue
        was = getattr(model_args if key == "attn_implementation" else training_args, key)
        if was == value:
            plan.unchanged[key] = f"already {value}"
            continue
        plan.applied[key] = {"value": value, "was": was, "why": why}
    return plan


def _model_shape(path: str, parameters: int) -> ModelShape | None:
    from transformers import AutoConfig

    try:
        # The model is resolved (downloaded, converted or built) before this runs: never go to the network here.
        return ModelShape.from_config(AutoConfig.from_pretrained(path, local_files_only=True), parameters)
    except (OSError, ValueError, AttributeError):
        return None


def _decide(kind: RecipeKind, args, model_args, explicit, device, shape, plan) -> dict:
    """The defaults to set, in dependency order (a later choice reads the earlier ones' final values)."""
    wanted: dict[str, tuple] = {}

    def want(key, value, why, blocker=None):
        if key in explicit:
            plan.skipped[key] = USER_SET
        elif blocker:
            plan.skipped[key] = blocker
        else:
            wanted[key] = (value, why)

    def final(key):
        return wanted[key][0] if key in wanted else getattr(model_args if key == "attn_implementation" else args, key)

    gpu = None if device.cuda else "not on a GPU"
    recipe = kind.name
    preference = not kind.generates  # the trainers this module tunes beyond checkpointing
    row_tokens = _row_tokens(kind, args)
    # Does a DPO reference model stay on the device beside the policy (no precomputed log-probs in the end)?
    reference = recipe == "dpo" and not (args.precompute_ref_log_probs or (
        device.cuda and "precompute_ref_log_probs" not in explicit and not args.sync_ref_model))

    # Micro-batch first: whether the model fits without checkpointing depends on it.
    _decide_micro_batch(kind, args, explicit, device, shape, row_tokens, reference, want, gpu)
    need = shape and (shape.static_bytes(reference)
                      + final("per_device_train_batch_size") * row_tokens * shape.activation_bytes_per_token())
    room = 0.9 * device.total_bytes / device.cells_per_gpu if device.cuda else 0.5 * device.free_bytes
    want("gradient_checkpointing", False,
         f"the model fits without it (~{(need or 0) / 2**30:.1f} of {room / 2**30:.0f} GiB); recomputing costs time",
         None if need and need < room else "the model may not fit without it (or its shape is unknown)")

    want("bf16", True, "bf16 autocast over fp32 master weights", gpu or
         ("this GPU has no bf16" if not device.bf16 else None) or ("fp16 asked for" if args.fp16 else None))
    want("optim", "adamw_torch_fused", "one fused kernel for the AdamW update", gpu)
    # transformers asks DDP to search for unused parameters whenever gradient checkpointing is off: a graph traversal
    # and an extra collective every step. Every parameter of these models (and of a LoRA adapter) gets a gradient.
    want("ddp_find_unused_parameters", False, "every parameter gets a gradient every step: no search for unused "
                                              "ones (a traversal and a collective per step)", gpu)
    workers = min(4, max(1, device.cpus // max(1, device.local_processes) // 2))
    want("dataloader_num_workers", workers, "batches collated while the GPU computes", gpu)
    if final("dataloader_num_workers") > 0:
        want("dataloader_persistent_workers", True, "workers kept between epochs and evaluations", gpu)
    if preference:
        procs = min(8, device.cpus // max(1, device.local_processes))
        want("dataset_num_proc", procs, "tokenization in parallel", gpu or (None if procs > 1 else "one CPU core"))
    want("compiled_layers", True, "torch.compile of each decoder layer, in place (ModelSpeedCallback)",
         gpu or (f"torch_compile {USER_SET}" if "torch_compile" in explicit else None)
         or ("DeepSpeed: compile untested with it here" if device.deepspeed else None)
         or (None if preference else "RL recipes compile their rollouts instead (compile_generation)"))
    if preference:
        want("use_liger_kernel", True, "Liger's fused RMSNorm, SwiGLU and RoPE kernels",
             gpu or (None if device.liger else "liger-kernel not installed (pip install liger-kernel)")
             or ("torch.compile already fuses these ops, and Liger's Triton calls would split its graphs"
                 if "compiled_layers" in wanted or args.torch_compile else None))
        if "use_liger_kernel" in wanted:
            # TRL 1.16 computes log-probs with its own chunked LM head (the 32000-way logits are never materialised),
            # and refuses Liger's fused linear cross-entropy, which would replace it.
            wanted["liger_kernel_config"] = ({**(args.liger_kernel_config or {}), "fused_linear_cross_entropy": False},
                                             "TRL's fused LM head stays; Liger adds its layer kernels")
        _decide_padding_free(recipe, args, explicit, device, want, final, wanted, plan)
    if recipe == "dpo":
        want("precompute_ref_log_probs", True,
             "the reference model scores the data once, in no-grad batches, instead of every step; its weights "
             "leave the GPU", gpu or ("sync_ref_model updates the reference" if args.sync_ref_model else None))
    return wanted


def _decide_padding_free(recipe, args, explicit, device, want, final, wanted, plan) -> None:
    """SFT: TRL's best-fit-decreasing packing (padding-free rows, positions restarting at each example). DPO and
    reward: the padded batch runs as one packed row (`padding_free.pack_backbone`). Both need an attention that
    keeps examples apart without a dense mask, so the attention implementation is part of the choice."""
    user_attention = "attn_implementation" in explicit
    attention = final("attn_implementation") if user_attention else device.varlen_attention
    half = final("bf16") or args.fp16
    blocker = ("not on a GPU (the dense packed mask is slower there than padding)" if not device.cuda else
               "no varlen attention here (compute capability >= 8.0 and PyTorch >= 2.9, or flash-attn)"
               if not attention else
               # In fp32 the varlen kernel cannot run: every packed example would go through a Python loop.
               "the varlen attention kernel runs in bf16 or fp16 only, and neither is on" if not half else None)
    if user_attention and attention not in padding_free.VARLEN_IMPLEMENTATIONS:
        blocker = f"attn_implementation {attention!r} was asked for; it needs a dense mask for packed rows"
    elif recipe == "sft" and device.cuda and blocker and "packing" in explicit and args.packing:
        # The config's packing would run each row of max_length tokens under a dense block-diagonal mask: 10-50x
        # slower than padding, or out of memory. The one place this plan undoes a user's setting, and says so.
        why = f"packing asked for, but {blocker}: padded batches instead of a dense-masked packed row"
        wanted["packing"] = (False, why)
        plan.overridden["packing"] = why
    if recipe == "sft" and "packing" not in plan.overridden:
        want("packing", True, "rows of max_length tokens, no padding, examples kept apart by position_ids; a step "
                              "then holds per_device_train_batch_size x max_length tokens, not that many examples",
             blocker or ("padding_free false asked for" if "padding_free" in explicit and not args.padding_free
                         else None))
        if final("packing"):
            want("packing_strategy", "bfd", "best-fit decreasing: whole examples, padding-free", blocker)
    # TRL's SFT runs padding-free rows itself with padding_free, or with bfd packing.
    packed_by_trl = recipe == "sft" and (args.padding_free or (
        final("packing") and final("packing_strategy") in ("bfd", "bfd_split")))
    # DPO's own padding_free: TRL 1.16 disables it (warns, pads); asking for it turns this module's on.
    asked = recipe == "dpo" and "padding_free" in explicit and args.padding_free
    refused = "padding_free" in explicit and not args.padding_free
    if refused and not packed_by_trl:
        plan.skipped["padding_free_batches"] = f"padding_free {USER_SET}"
    elif not packed_by_trl:
        # Asked for: transformers keeps packed examples apart with any attention, if not always fast.
        want("padding_free_batches", True, "the padded batch runs as one packed row (padding_free.pack_backbone)",
             None if asked else blocker)
        if "padding_free_batches" in wanted and recipe == "dpo" and args.padding_free:
            wanted["padding_free"] = (False, "TRL 1.16 disables its own DPO padding_free (warns, pads); the "
                                             "backbone packs the batch instead")
    if user_attention:
        plan.skipped["attn_implementation"] = USER_SET
    elif (packed_by_trl or "padding_free_batches" in wanted) and device.cuda and attention:
        want("attn_implementation", attention, "varlen attention: each example of a packed row attends only to "
                                               "itself, without a dense mask")


def _decide_micro_batch(kind, args, explicit, device, shape, row_tokens, reference, want, gpu) -> None:
    """The micro-batch that fits this run's share of the GPU, with the accumulation that keeps the global batch
    (micro-batch x accumulation x processes) what the config says: optimiser steps and the learning-rate schedule
    must not depend on the GPU or its load, or cells of one study would differ by the machine they ran on."""
    per_process = args.per_device_train_batch_size * args.gradient_accumulation_steps
    fit = _rows_that_fit(shape, device, row_tokens, reference) if shape and device.cuda else 0
    rows = max((d for d in range(1, min(fit, per_process) + 1) if per_process % d == 0), default=0)
    blocker = (gpu or ("DeepSpeed shards the optimizer: the estimate does not hold" if device.deepspeed else None)
               # GRPOConfig.__post_init__ derived generation_batch_size and steps_per_generation from the batch, and
               # colocated vLLM's memory is not in the estimate.
               or ("RL: the generation batch was derived from this batch; set per_device_train_batch_size to size it"
                   if kind.generates else None)
               # Either half of the batch set by the user: the split is theirs too.
               or (f"gradient_accumulation_steps {USER_SET}" if "gradient_accumulation_steps" in explicit else None)
               or (None if rows else "model shape unknown, or not even one row fits"))
    share = device.share_bytes() / 2**30
    want("per_device_train_batch_size", rows,
         f"the largest divisor of the {per_process} rows a process adds to each optimiser step whose activations "
         f"fit in 80% of this run's {share:.0f} GiB ({row_tokens} tokens a row); the global batch is unchanged",
         blocker)
    if rows and not blocker and "per_device_train_batch_size" not in explicit:
        want("gradient_accumulation_steps", per_process // rows,
             f"micro-batch x accumulation kept at {per_process} rows per process per optimiser step")


def _row_tokens(kind: RecipeKind, args) -> int:
    """Tokens of one row of a micro-batch at most: a sequence, a chosen/rejected pair, or a prompt and its rollout."""
    if kind.row == "rollout":
        return 512 + (getattr(args, "max_completion_length", None) or 256)
    length = getattr(args, "max_length", None) or 1024
    return 2 * length if kind.row == "pair" else length


def _rows_that_fit(shape: ModelShape, device: Device, row_tokens: int, reference: bool) -> int:
    budget = 0.8 * device.share_bytes() - shape.static_bytes(reference)
    fit = int(budget // (row_tokens * shape.activation_bytes_per_token()))
    return min(MAX_MICRO_BATCH, max(0, fit))


def _set(target, key: str, value) -> None:
    """Set a field after `__post_init__`, and what `__post_init__` derives from it."""
    setattr(target, key, value)
    if key in ALIASES:
        setattr(target, ALIASES[key], value)
    if key == "bf16":
        target.mixed_precision = "bf16"
    if key == "optim":
        from transformers.training_args import OptimizerNames

        target.optim = OptimizerNames(value)
