"""Evaluation generation speed: the judged and RL evaluations' sampler against plain Hugging Face `generate`, in
the same process, on random weights.

A judged evaluation (`--eval_judge`) and the RL evaluation sample `--eval_num_samples` replies per held-out prompt
for the base model and again for the trained one (`align_proxy.evals.rl.sample_completions`). Measured, one JSON line
each, then their ratios:

- `hf-generate-per-prompt`: plain `generate` called once per prompt with `num_return_sequences` samples, as a
  hand-written evaluation loop would;
- `hf-generate-batched`: plain `generate` on the sampler's own batches (left-padded, dynamic cache, eager);
- `align-proxy-eval`: `sample_completions` as the evaluations call it (on a GPU, when the decoding is long enough to
  repay compiling it: equal batches, one static KV cache kept between them, compiled decoding; otherwise the same
  batches as `hf-generate-batched`);
- `align-proxy-eval-compiled` (GPU only): the same with compiled decoding forced on, whatever the length.

Throughput counts the tokens each reply really has (up to and including its first EOS), over `--repeats` timed
calls after one warm-up call; the warm-up's time (compilation included) is reported apart as `warmup_s`.

    python benchmarks/eval_generation.py                               # CPU, tiny shape (~1 minute)
    python benchmarks/eval_generation.py --shape 62m --new-tokens 128   # one GPU
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

PAD, EOS = 0, 2
CUDA = False  # set in main, once torch is imported: `--help` stays quick


class Tokenizer:
    """What the sampler reads of a tokenizer: its pad id (prompts here are token ids already)."""

    pad_token_id = PAD


def shape_config(shape: str):
    from transformers import LlamaConfig

    from align_proxy.models.registry import CLIMB

    if shape == "tiny":  # a CPU-sized stand-in: 4 layers, width 64, vocabulary 512
        return LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                           num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                           max_position_embeddings=1024)
    return CLIMB[f"climb-{shape}"].config()


def sync() -> None:
    if CUDA:
        import torch

        torch.cuda.synchronize()


def timed(run, repeats: int) -> tuple[float, float, int]:
    """(warm-up seconds, seconds per timed call, tokens per call) of `run()`, which returns its reply token count."""
    sync()
    start = time.perf_counter()
    tokens = run()
    sync()
    warmup = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(repeats):
        tokens = run()
    sync()
    return warmup, (time.perf_counter() - start) / repeats, tokens


def reply_tokens(out, width: int) -> int:
    """Tokens of each generated row up to and including its first EOS (what the sampler keeps)."""
    count = 0
    for row in out[:, width:].tolist():
        count += row.index(EOS) + 1 if EOS in row else len(row)
    return count


def left_padded(rows: list[list[int]], device):
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), PAD, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = torch.tensor(row)
        mask[i, width - len(row):] = 1
    return ids.to(device), mask.to(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=("tiny", "62m", "350m"), help="default: 62m on a GPU, tiny on a CPU")
    parser.add_argument("--prompts", type=int, help="held-out prompts (default: 200 on a GPU, 32 on a CPU)")
    parser.add_argument("--samples", type=int, default=4, help="replies per prompt (--eval_num_samples)")
    parser.add_argument("--new-tokens", type=int, help="--eval_max_new_tokens (default: 128 on a GPU, 32 on a CPU)")
    parser.add_argument("--prompt-len", type=int, nargs=2,
                        help="prompt lengths are drawn uniformly from this range (default: 16 64 on a GPU, 8 24)")
    parser.add_argument("--batch", type=int, default=256, help="the sampler's batch size")
    parser.add_argument("--per-prompt", type=int,
                        help="prompts the per-prompt baseline is timed on, its rate being per token (default: 16 on "
                             "a GPU, 8 on a CPU)")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls after the warm-up call")
    parser.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "eval_generation.json"))
    a = parser.parse_args()

    global CUDA
    import torch
    from transformers import LlamaForCausalLM

    from align_proxy.evals.rl import Sampling, decoding_plan, sample_completions

    CUDA = torch.cuda.is_available()
    for name, gpu, cpu in (("shape", "62m", "tiny"), ("prompts", 200, 32), ("new_tokens", 128, 32),
                           ("prompt_len", (16, 64), (8, 24)), ("per_prompt", 16, 8)):
        if getattr(a, name) is None:
            setattr(a, name, gpu if CUDA else cpu)

    device = torch.device("cuda" if CUDA else "cpu")
    header = {"device": torch.cuda.get_device_name() if CUDA else f"CPU ({torch.get_num_threads()} threads)",
              "shape": a.shape, "torch": torch.__version__}
    print(json.dumps(header), flush=True)
    torch.manual_seed(0)
    config = shape_config(a.shape)
    model = LlamaForCausalLM(config).to(device, torch.bfloat16 if CUDA else torch.float32).eval()
    model.generation_config.pad_token_id, model.generation_config.eos_token_id = PAD, EOS
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(a.prompt_len[0], a.prompt_len[1] + 1, (a.prompts,), generator=generator).tolist()
    prompts = [torch.randint(4, config.vocab_size, (n,), generator=generator).tolist() for n in lengths]
    sampling = Sampling(a.new_tokens, temperature=1.0, num_samples=a.samples)
    settings = dict(do_sample=True, max_new_tokens=a.new_tokens, temperature=1.0, top_p=1.0, top_k=0,
                    pad_token_id=PAD, eos_token_id=[EOS])

    def per_prompt() -> int:
        tokens = 0
        for row in prompts[:a.per_prompt]:
            ids = torch.tensor([row], device=device)
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                 num_return_sequences=a.samples, **settings)
            tokens += reply_tokens(out, ids.shape[1])
        return tokens

    rows = [row for row in prompts for _ in range(a.samples)]

    def batched() -> int:
        tokens = 0
        for lo in range(0, len(rows), a.batch):
            ids, mask = left_padded(rows[lo:lo + a.batch], device)
            tokens += reply_tokens(model.generate(input_ids=ids, attention_mask=mask, **settings), ids.shape[1])
        return tokens

    def sampler(compile: bool | None):
        def run() -> int:
            _, completions = sample_completions(model, Tokenizer(), prompts, sampling, [EOS], batch_size=a.batch,
                                                compile=compile)
            return sum(len(c) for c in completions)
        return run

    plan = decoding_plan(model, len(rows), a.batch, a.new_tokens)
    variants = [("hf-generate-per-prompt", per_prompt, a.per_prompt * a.samples),
                ("hf-generate-batched", batched, len(rows)),
                ("align-proxy-eval", sampler(None), len(rows))]
    if CUDA:
        variants.append(("align-proxy-eval-compiled", sampler(True), len(rows)))
    results = {}
    for name, run, replies in variants:
        try:
            warmup, seconds, tokens = timed(run, a.repeats)
            row = {"what": name, "replies": replies, "reply_tokens": tokens, "seconds": round(seconds, 3),
                   "tokens_per_s": round(tokens / seconds), "warmup_s": round(warmup, 2)}
            if name == "align-proxy-eval":
                row["decoding"] = plan
        except Exception as err:  # noqa: BLE001 - one failing variant should not hide the others' figures
            row = {"what": name, "error": f"{type(err).__name__}: {str(err)[:300]}"}
        results[name] = row
        print(json.dumps(row), flush=True)
        gc.collect()

    def ratio(faster: str, baseline: str) -> float | None:
        if "tokens_per_s" in results.get(faster, {}) and "tokens_per_s" in results.get(baseline, {}):
            return round(results[faster]["tokens_per_s"] / results[baseline]["tokens_per_s"], 2)
        return None

    ratios = {"eval_over_per_prompt": ratio("align-proxy-eval", "hf-generate-per-prompt"),
              "eval_over_batched": ratio("align-proxy-eval", "hf-generate-batched"),
              "compiled_over_batched": ratio("align-proxy-eval-compiled", "hf-generate-batched")}
    print(json.dumps({"ratios": ratios}), flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({**header, "args": vars(a), "results": list(results.values()),
                                       "ratios": ratios}, indent=1))


if __name__ == "__main__":
    main()
