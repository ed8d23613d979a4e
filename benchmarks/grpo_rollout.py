"""GRPO rollout speed: the recipe's settings against plain TRL, in the same process, on random weights.

Measures, one JSON line each, then their ratios:

- `hf-generate-default`: Hugging Face `generate` as TRL calls it (dynamic cache, compilation off), through a
  plain `GRPOTrainer`'s own model and generation config;
- `hf-generate-recipe`: the same through a trainer set up by `align_proxy.rl.configure_rollouts` (on a GPU:
  static cache kept between calls and compiled decoding; on CPU it leaves generation as is, so this equals the
  default there);
- `trl-grpo-plain`: `trl.GRPOTrainer` with TRL's defaults (gradient checkpointing on, one generate call
  per optimizer step), as in shared/bench/anchor_rollout.py;
- `align-proxy-grpo`: the same trainer with the recipe's settings: `configure_rollouts`, no gradient
  checkpointing, and `--steps-per-generation` optimizer steps fed by one larger generate call;
- `align-proxy-grpo-vllm`: the same with TRL's colocated vLLM, when vLLM and a GPU are there.

Every variant generates exactly `--new-tokens` per completion (`min_new_tokens`), so token counts are
exact. Step times exclude warm-up (the first generation cycle, which includes compilation).

    python benchmarks/grpo_rollout.py                                  # CPU, tiny shape (~1 minute)
    python benchmarks/grpo_rollout.py --shape 62m --new-tokens 256     # one GPU, the anchor's workload
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from align_proxy.models.registry import CLIMB  # noqa: E402

CUDA = torch.cuda.is_available()


def shape_config(shape: str) -> LlamaConfig:
    if shape == "tiny":  # a CPU-sized stand-in: 4 layers, width 64, vocabulary 512
        return LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                           num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                           max_position_embeddings=1024)
    return CLIMB[f"climb-{shape}"].config()


def make_model_dir(shape: str, root: Path) -> Path:
    """Random weights of the shape, and a word-level tokenizer over its whole vocabulary (`t0 t1 ...`)."""
    torch.manual_seed(0)
    config = shape_config(shape)
    model = LlamaForCausalLM(config)
    vocab = {f"t{i}": i for i in range(config.vocab_size)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="t3"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="t0", bos_token="t1", eos_token="t2",
                                        unk_token="t3")
    path = root / shape
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def prompts(n: int, length: int, vocab: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(f"t{rng.randrange(4, vocab)}" for _ in range(length)) for _ in range(n)]


def length_reward(prompts, completions, **kwargs):
    return [len(c) / 100 for c in completions]


class GenerateClock:
    """Wraps a model's `generate` to add up its time and the tokens it makes."""

    def __init__(self, model):
        self.seconds, self.tokens, self.calls, self._generate = 0.0, 0, 0, model.generate
        model.generate = self

    def __call__(self, *args, **kwargs):
        sync()
        start = time.perf_counter()
        out = self._generate(*args, **kwargs)
        sync()
        self.seconds += time.perf_counter() - start
        prompt_len = (kwargs.get("input_ids") if "input_ids" in kwargs else args[0]).shape[1]
        self.tokens += out.shape[0] * (out.shape[1] - prompt_len)
        self.calls += 1
        return out


class StepClock(TrainerCallback):
    def __init__(self):
        self.times = []

    def on_step_begin(self, args, state, control, **kwargs):
        sync()
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        sync()
        self.times.append(time.perf_counter() - self.start)


def grpo_trainer(path: Path, a, variant: str, callbacks=()):
    """The GRPO trainer of a variant, as the recipe (or plain TRL) builds it; returns it, its backend's description
    and its steps per generation."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from align_proxy.rl import RLArguments, configure_rollouts  # here, not at the top: `--help` stays quick

    recipe = variant != "trl-grpo-plain"
    steps_per_generation = a.steps_per_generation if recipe else 1
    # Warm-up: the first generation cycle (compilation, cache allocation); then `--cycles` measured ones.
    steps = steps_per_generation * (1 + a.cycles)
    vocab = shape_config(a.shape).vocab_size
    data = Dataset.from_dict({"prompt": prompts(a.prompts * steps, a.prompt_len, vocab)})
    args = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="grpo-bench-"), per_device_train_batch_size=a.prompts * a.generations,
        num_generations=a.generations, max_completion_length=a.new_tokens, max_steps=steps, logging_steps=10_000,
        report_to=[], save_strategy="no", bf16=CUDA, use_cpu=not CUDA, disable_tqdm=True, shuffle_dataset=False,
        generation_kwargs={"min_new_tokens": a.new_tokens},
        # The recipe's settings; plain TRL keeps its defaults (gradient checkpointing on, one step per generation).
        **({"gradient_checkpointing": False, "steps_per_generation": steps_per_generation} if recipe else {}),
        **({"use_vllm": True, "vllm_mode": "colocate", "vllm_gpu_memory_utilization": 0.3}
           if variant.endswith("vllm") else {}),
    )
    trainer = GRPOTrainer(model=str(path), reward_funcs=length_reward, args=args, train_dataset=data,
                          callbacks=list(callbacks))
    backend = configure_rollouts(trainer, RLArguments()) if recipe else "TRL defaults"
    return trainer, backend, steps_per_generation


def bench_generate(path: Path, a, recipe: bool) -> dict:
    """tokens/s of `generate` at batch `--gen-batch` through the trainer's own model and generation config (its
    dtype, its wrappers, and for the recipe the cache `configure_rollouts` keeps), after two warm-up calls (the
    second is the first to reuse a kept cache)."""
    trainer, backend, _ = grpo_trainer(path, a, "align-proxy-grpo" if recipe else "trl-grpo-plain")
    model = trainer.accelerator.unwrap_model(trainer.model).eval()
    config = copy.deepcopy(trainer.generation_config)
    config.max_new_tokens = config.min_new_tokens = a.new_tokens
    ids = torch.randint(4, model.config.vocab_size, (a.gen_batch, a.prompt_len), device=model.device)
    with torch.no_grad():
        for _ in range(2):
            model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)
        sync()
        start = time.perf_counter()
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)
        sync()
    seconds = time.perf_counter() - start
    return {"what": "hf-generate-recipe" if recipe else "hf-generate-default", "backend": backend,
            "weights": str(next(model.parameters()).dtype), "batch": a.gen_batch, "new_tokens": a.new_tokens,
            "seconds": round(seconds, 3), "new_tokens_per_s": round(a.gen_batch * a.new_tokens / seconds)}


def bench_grpo(path: Path, a, variant: str) -> dict:
    clock = StepClock()
    trainer, backend, steps_per_generation = grpo_trainer(path, a, variant, callbacks=[clock])
    generate = GenerateClock(trainer.model) if not variant.endswith("vllm") else None
    if CUDA:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    measured = clock.times[steps_per_generation:]
    step = sum(measured) / len(measured)
    completion_tokens = a.prompts * a.generations * a.new_tokens
    row = {"what": variant, "backend": backend, "prompts_per_step": a.prompts, "num_generations": a.generations,
           "completion_tokens": a.new_tokens, "steps_per_generation": steps_per_generation,
           "mean_step_s": round(step, 3), "completion_tokens_per_s": round(completion_tokens / step),
           "warmup_s": round(sum(clock.times[:steps_per_generation]), 2)}
    if generate is not None and generate.calls:
        row["generate_calls"] = generate.calls
        row["generate_share_of_time"] = round(generate.seconds / sum(clock.times), 3)
    if CUDA:
        row["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
    return row


def ratio(rows: dict, faster: str, baseline: str, key: str) -> float | None:
    if faster in rows and baseline in rows and key in rows[faster] and key in rows[baseline]:
        return round(rows[faster][key] / rows[baseline][key], 2)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="62m" if CUDA else "tiny", choices=("tiny", "62m", "350m"))
    parser.add_argument("--prompts", type=int, default=8, help="prompts per optimizer step")
    parser.add_argument("--generations", type=int, default=8, help="completions per prompt")
    parser.add_argument("--new-tokens", type=int, default=256 if CUDA else 32)
    parser.add_argument("--prompt-len", type=int, default=64 if CUDA else 16)
    parser.add_argument("--gen-batch", type=int, default=256, help="batch of the generate-only measurement")
    parser.add_argument("--steps-per-generation", type=int, default=4)
    parser.add_argument("--cycles", type=int, default=2, help="measured generation cycles after the warm-up one")
    parser.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "grpo_rollout.json"))
    a = parser.parse_args()

    from trl.import_utils import is_vllm_available

    device = torch.cuda.get_device_name() if CUDA else f"CPU ({torch.get_num_threads()} threads)"
    header = {"device": device, "shape": a.shape, "torch": torch.__version__}
    print(json.dumps(header), flush=True)
    path = make_model_dir(a.shape, Path(tempfile.mkdtemp(prefix="grpo-bench-model-")))
    variants = [("hf-generate-default", lambda: bench_generate(path, a, recipe=False)),
                ("hf-generate-recipe", lambda: bench_generate(path, a, recipe=True)),
                ("trl-grpo-plain", lambda: bench_grpo(path, a, "trl-grpo-plain")),
                ("align-proxy-grpo", lambda: bench_grpo(path, a, "align-proxy-grpo"))]
    if CUDA and is_vllm_available():
        variants.append(("align-proxy-grpo-vllm", lambda: bench_grpo(path, a, "align-proxy-grpo-vllm")))
    rows = {}
    for name, run in variants:
        try:
            row = run()
        except Exception as err:  # noqa: BLE001 - one failing variant should not hide the others' figures
            row = {"what": name, "error": f"{type(err).__name__}: {str(err)[:300]}"}
        rows[name] = row
        print(json.dumps(row), flush=True)
        gc.collect()  # free the variant's model and optimizer before the next one (colocated vLLM needs the room)
        if CUDA:
            torch.cuda.empty_cache()
    ratios = {
        "generate_tokens_per_s_recipe_over_default": ratio(rows, "hf-generate-recipe", "hf-generate-default",
                                                           "new_tokens_per_s"),
        "grpo_step_speedup_recipe_over_plain": ratio(rows, "trl-grpo-plain", "align-proxy-grpo", "mean_step_s"),
        "grpo_step_speedup_vllm_over_plain": ratio(rows, "trl-grpo-plain", "align-proxy-grpo-vllm", "mean_step_s"),
    }
    print(json.dumps({"ratios": ratios}), flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({**header, "args": vars(a), "results": list(rows.values()), "ratios": ratios},
                                      indent=1))


if __name__ == "__main__":
    main()
