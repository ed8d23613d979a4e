"""Proxy-tuned generation time against the three models' own generation times, in the same process.

A proxy-tuned model (`align_proxy.proxy_tuning`) runs the base, the expert and the anti-expert at every step,
each with its own KV cache, so its floor is the sum of their own `generate` times on the same prompts; the
target is at most that sum plus 20%. Every call generates exactly `--new-tokens` tokens per prompt
(`min_new_tokens`), greedy, on the same left-padded batch; each time is the median of `--repeats` runs after
one warm-up, the four models taking turns within each repeat. Weights are random at the offline ladder's shapes
(the time does not depend on them), so the script needs no built ladder.

    python benchmarks/proxy_tuning.py                        # ladder-l steered by two ladder-s models, CPU or GPU
    python benchmarks/proxy_tuning.py --small ladder-m --batch 256 --new-tokens 32

On a GPU it prints the GPU figure (the same comparison on `cuda`) as well as the CPU one.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from align_proxy.data.tasks import get_task  # noqa: E402
from align_proxy.models.ladder_spec import DEFAULT_RUNGS  # noqa: E402
from align_proxy.models.tokenizer import build_tokenizer  # noqa: E402
from align_proxy.proxy_tuning import ProxyTunedModel  # noqa: E402


def random_rung(name: str, seed: int, tokenizer) -> LlamaForCausalLM:
    rung = next(r for r in DEFAULT_RUNGS if r.name == name)
    torch.manual_seed(seed)
    return LlamaForCausalLM(rung.config(len(tokenizer), 256)).eval()


def timed_generates(models: dict, batch: dict, new_tokens: int, repeats: int, pad_id: int) -> dict[str, float]:
    """Median seconds of one greedy `generate` of exactly `new_tokens` tokens per model, after one warm-up each.
    The models take turns within every repeat, so a machine whose load drifts slows them all alike."""
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=pad_id)
    times = {name: [] for name in models}
    with torch.no_grad():
        for model in models.values():
            model.generate(**batch, **kwargs)
        for _ in range(repeats):
            for name, model in models.items():
                if batch["input_ids"].is_cuda:
                    torch.cuda.synchronize()
                start = time.perf_counter()
                model.generate(**batch, **kwargs)
                if batch["input_ids"].is_cuda:
                    torch.cuda.synchronize()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def measure(device: str, args) -> dict:
    tokenizer = build_tokenizer()
    prompts = list(get_task("arith").evaluation(args.batch, seed=0)["prompt"])
    batch = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left").to(device)
    base = random_rung(args.large, 0, tokenizer).to(device)
    expert = random_rung(args.small, 1, tokenizer).to(device)
    anti = random_rung(args.small, 2, tokenizer).to(device)
    proxy = ProxyTunedModel(base, expert, anti, alpha=1.0, vocab_size=len(tokenizer))
    pad = tokenizer.pad_token_id
    times = timed_generates({"base": base, "expert": expert, "anti_expert": anti, "proxy_tuned": proxy}, batch,
                            args.new_tokens, args.repeats, pad)
    parts = times["base"] + times["expert"] + times["anti_expert"]
    return {"device": device, "large": args.large, "small": args.small, "batch": args.batch,
            "new_tokens": args.new_tokens, "seconds": times, "sum_of_three": parts,
            "ratio": times["proxy_tuned"] / parts, "target": 1.2}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", default="ladder-l", help="the base model's ladder shape")
    parser.add_argument("--small", default="ladder-s", help="the expert's and anti-expert's ladder shape")
    parser.add_argument("--batch", type=int, default=200, help="prompts per generate call (an evaluation's 200 items)")
    parser.add_argument("--new-tokens", type=int, default=8, help="tokens generated per prompt (the evaluation's 8)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", help="also write the results as JSON here")
    args = parser.parse_args()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    results = []
    for device in devices:
        r = measure(device, args)
        results.append(r)
        s = r["seconds"]
        print(f"{device}: {args.large} steered by 2 x {args.small}, {args.batch} prompts x {args.new_tokens} new tokens: "
              f"base {s['base']:.3f} s + expert {s['expert']:.3f} s + anti-expert {s['anti_expert']:.3f} s = "
              f"{r['sum_of_three']:.3f} s; proxy-tuned {s['proxy_tuned']:.3f} s; ratio {r['ratio']:.2f} "
              f"(target <= {r['target']:.2f}: {'met' if r['ratio'] <= r['target'] else 'MISSED'})", flush=True)
    if "cuda" not in devices:
        print("no GPU here: run on one for the GPU figure")
    if args.out:
        Path(args.out).write_text(json.dumps({"results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
