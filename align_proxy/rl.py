"""What the RL recipes (`recipes/grpo.py`, `recipes/rloo.py`) share: their arguments, the rollout
backend (vLLM through TRL, or a faster Hugging Face `generate`), and their rewards (their evaluation is
`align_proxy.evals.rl.RLEvaluation`).

Rollout, reward and update stay separate: rollouts are TRL's generation backends, configured here;
rewards come from `rewards/` and know nothing of the trainer; the update is TRL's own loss.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from accelerate import PartialState
from trl.import_utils import is_vllm_available

from align_proxy.errors import MissingDependencyError, RecipeArgumentError
from align_proxy.recipe_arguments import ChatTemplateArguments
from align_proxy.rewards import RewardSet, load_rewards

VLLM_MODES = ("colocate", "server")


@dataclass
class RLArguments(ChatTemplateArguments):
    """The RL recipes' own arguments on top of `RecipeArguments` (and --chat_template_path, which TRL's GRPO and
    RLOO configs lack): what to reward and how to evaluate."""

    reward_funcs: list[str] | None = field(
        default=None, metadata={"help": "Rewards to optimise, summed with --reward_weights: registered names "
                                        "(arith_exact_match, arith_digit_overlap, answer_format, overlong_penalty), "
                                        "module:function paths, or the output directory of recipes/reward.py "
                                        "(its reward model, as a learned reward)."})
    curve_every: int = field(
        default=0, metadata={"help": "Every this many optimiser steps (and before the first), score the policy on "
                                     "--curve_prompts held-out prompts: proxy reward, gold reward and KL to the "
                                     "reference, written to metrics.json's train.curve (Gao et al.'s overoptimization "
                                     "curve). 0: off."})
    curve_prompts: int = field(default=32, metadata={"help": "Held-out prompts per point of --curve_every."})
    compile_generation: bool = field(
        default=True, metadata={"help": "Without vLLM, on a GPU: generate with a static KV cache and a compiled "
                                        "decoding step (CUDA graphs) instead of TRL's dynamic, uncompiled default. "
                                        "No effect on CPU, where compiling costs more than it saves."})


def check_rollout_backend(training_args) -> None:
    """Fail at start-up, before data or weights are read, when the rollout backend asked for cannot run:
    otherwise TRL only finds out when it builds its trainer, after the base model's evaluation."""
    if not training_args.use_vllm:
        return
    if training_args.vllm_mode not in VLLM_MODES:
        raise RecipeArgumentError(f"--vllm_mode {training_args.vllm_mode!r} is not a vLLM mode: use 'colocate' (vLLM "
                                  "shares the training GPU, in this process) or 'server' (a separate `trl vllm-serve` "
                                  "process)")
    if not is_vllm_available():
        raise MissingDependencyError(
            "--use_vllm is set, but vLLM is not installed here. Install the extra on a CUDA machine with "
            "`pip install -e '.[vllm]'` (it brings its own CUDA torch), or pass --use_vllm false to generate "
            "with Hugging Face generate (on a GPU: static cache, compiled decoding)."
        )


def _compile_blocker(trainer) -> str | None:
    """Why compiled decoding cannot be used for this trainer, or None."""
    if trainer.accelerator.device.type != "cuda":
        # transformers compiles only on accelerators; forcing it on CPU measured slower at ladder sizes
        # (tiny shape, batch 256: static cache -7%, compiled -39% after a 36 s compile).
        return "not on a GPU"
    if trainer.args.cache_implementation not in (None, "static"):
        return f"--cache_implementation {trainer.args.cache_implementation} asked for"
    if trainer.is_fsdp_enabled:
        return "FSDP shards the weights"
    plugin = trainer.accelerator.state.deepspeed_plugin
    if plugin is not None and plugin.zero_stage == 3:
        # ZeRO-3 gathers the weights into fresh buffers for every generation: CUDA graphs would replay
        # against stale addresses.
        return "DeepSpeed ZeRO-3 gathers the weights anew for every generation"
    return None


def configure_rollouts(trainer, script_args: RLArguments) -> str:
    """Make Hugging Face generation fast where it can be, and say which backend rolls out.

    TRL builds its `GenerationConfig` with `disable_compile=True` and a dynamic cache, so each decoding
    step launches every layer's kernels one by one from Python: launch-bound at proxy sizes (82 ms per
    step for the 62M proxy at batch 256, 3.1k new tokens/s, in shared/bench/README.md). With a static
    cache and compilation allowed, transformers compiles the decoding step (mode `reduce-overhead`: CUDA
    graphs); TRL's generation batch has a fixed size and transformers only ever grows a static cache, so
    it compiles once or twice per run. Larger generation batches (`steps_per_generation`) spread the
    per-step cost over more completions, on CPU too.
    """
    args = trainer.args
    per_call = args.generation_batch_size // max(1, trainer.accelerator.num_processes)
    if args.use_vllm:
        where = (f"server at {args.vllm_server_base_url or f'{args.vllm_server_host}:{args.vllm_server_port}'}"
                 if args.vllm_mode == "server" else
                 f"colocated on this GPU, {args.vllm_gpu_memory_utilization:.0%} of its memory")
        message = f"rollouts: vLLM ({where}), {per_call} completions per generation batch"
    elif args.use_transformers_continuous_batching:
        message = f"rollouts: transformers continuous batching (vLLM not requested), {per_call} completions per call"
    else:
        message = f"rollouts: Hugging Face generate (vLLM not requested), {per_call} completions per generate call"
        blocker = _compile_blocker(trainer) if script_args.compile_generation else "--compile_generation false"
        if blocker is None:
            from transformers import CompileConfig

            config = trainer.generation_config
            config.cache_implementation = config.cache_implementation or "static"
            config.disable_compile = False
            config.compile_config = CompileConfig()
            model = trainer.accelerator.unwrap_model(trainer.model)
            if "generate" not in vars(model):
                model.generate = StaticCacheReuse(model)
            message += f", {config.cache_implementation} cache, compiled decoding (CUDA graphs), one cache kept " \
                       "between calls"
        else:
            message += f", {trainer.generation_config.cache_implementation or 'dynamic'} cache, eager decoding " \
                       f"({blocker})"
    if PartialState().is_main_process:
        print(f"[align-proxy] {message}", flush=True)
    return message


class StaticCacheReuse:
    """A model's `generate` that keeps one static KV cache between calls, reset in place, while the batch size
    holds and the cache is long enough.

    transformers builds a fresh `StaticCache` in every `generate()` call: new tensors at new addresses, so the
    compiled decoding step's CUDA graphs record again every generation batch instead of replaying. TRL's
    generation batch has a fixed size, so one cache serves the whole run (a longer one is built, once, when a
    batch's prompts are longer than any before)."""

    ROUND = 64  # cache lengths are rounded up, so a batch whose prompts are a few tokens longer still fits

    def __init__(self, model):
        self.model, self.generate, self.cache, self.batch, self.length = model, model.generate, None, None, 0
        self.built = self.calls = 0  # caches built and calls served, for tests and logs

    def __call__(self, *args, generation_config=None, **kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        config = generation_config or self.model.generation_config
        if ids is None or config.cache_implementation != "static" or kwargs.get("cache") is not None \
                or config.max_new_tokens is None or max(config.num_beams or 1, config.num_return_sequences or 1) > 1:
            return self.generate(*args, generation_config=generation_config, **kwargs)
        from transformers import StaticCache

        need = ids.shape[1] + config.max_new_tokens
        self.calls += 1
        if self.cache is None or ids.shape[0] != self.batch or need > self.length:
            self.length = max(-(-need // self.ROUND) * self.ROUND, self.length)
            self.cache = StaticCache(config=self.model.config.get_text_config(decoder=True), max_cache_len=self.length)
            self.batch, self.built = ids.shape[0], self.built + 1
        else:
            self.cache.reset()  # zeroed in place: the addresses the CUDA graphs captured stay valid
        config = copy.copy(config)
        config.cache_implementation = None  # the cache is given (transformers refuses both)
        return self.generate(*args, generation_config=config, cache=self.cache, **kwargs)


def reward_set(script_args: RLArguments, training_args) -> RewardSet:
    """The run's rewards, weighted by TRL's own `reward_weights`, checked before any data is read."""
    return load_rewards(script_args.reward_funcs, training_args.reward_weights, training_args)
