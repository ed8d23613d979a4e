"""Training throughput of the SFT, DPO and reward recipes against plain TRL, in the same process, on random weights.

For each shape and recipe, two variants train on the same data with the same batch and max length:

- `trl-plain`: the recipe with `--proxy_speed false`, i.e. TRL's defaults (gradient checkpointing on, padded
  batches, DPO's reference model run beside the policy);
- `align-proxy`: the recipe as shipped, with the proxy-speed defaults of align_proxy/speed.py for this machine.

Each is built exactly as `recipes/<recipe>.py` builds it: the recipe's parser over the flags a user would type,
`prepare_run` (data checked, speed defaults applied, run_config.yaml written; no evaluation), then
`Trainer(**run.trainer_kwargs())`; `--steps` optimizer steps are timed after `--warmup` (compilation, allocator).
Data: random tokens (`t4 t17 ...`, a word-level tokenizer over the whole vocabulary) with a log-normal length
spread (median max_length/4, as shared/bench/anchor_trl.py).

One JSON line per variant: `tokens_per_s` counts the real (non-pad) tokens fed to the model (a DPO pair counts
its prompt twice, as the trainer runs it); `mfu` is 6N (+ attention) FLOPs per token against `--peak-tflops`
(989: H100 dense bf16), so a reference forward is work done but not counted; `peak_gib` is the GPU's peak
allocation while training. DPO's precomputed reference log-probs run before training: `precompute_s` times that
pass, and `tokens_per_s_with_precompute` charges it to the steps of one epoch. Then the ratios to plain TRL.

`--concurrent 1,2,4` instead trains N copies of the `align-proxy` variant of the first shape and recipe at once,
in N processes (as `align-proxy study --jobs N` would run cells), and reports their aggregate tokens/s.

    python benchmarks/throughput.py                                     # CPU, tiny shape (~30 s)
    python benchmarks/throughput.py --concurrent 1,2                    # CPU: two runs at once against one
    python benchmarks/throughput.py --shapes 62m,350m                   # one GPU: the issue's table
    python benchmarks/throughput.py --shapes 62m --recipes sft --concurrent 1,2,4,8
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import random
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
from transformers import TrainerCallback

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing
sys.path.insert(0, str(REPO / "benchmarks"))

from grpo_rollout import make_model_dir, shape_config  # noqa: E402 - the same random-weight models

CUDA = torch.cuda.is_available()
VARIANTS = ("trl-plain", "align-proxy")


def lengths(n: int, max_len: int, rng: random.Random, low: int = 8) -> list[int]:
    return [int(min(max_len, max(low, rng.lognormvariate(math.log(max_len / 4), 0.7)))) for _ in range(n)]


def words(n: int, vocab: int, rng: random.Random) -> str:
    return " ".join(f"t{rng.randrange(4, vocab)}" for _ in range(n))  # t0-t3 are pad, bos, eos, unk


def write_data(recipe: str, path: Path, rows: int, max_len: int, vocab: int, seed: int = 0) -> float:
    """A jsonl file in the recipe's TRL format; returns the mean tokens of a sequence (for the attention FLOPs)."""
    rng, out, total = random.Random(seed), [], 0
    for length in lengths(rows, max_len - 2, rng):  # room for the special tokens the trainers add
        prompt = max(2, length // (4 if recipe == "sft" else 3))
        answer = max(2, length - prompt)
        if recipe == "sft":
            out.append({"prompt": words(prompt, vocab, rng), "completion": words(answer, vocab, rng)})
            total += length
        else:
            rejected = max(2, min(max_len - 2 - prompt, int(answer * rng.uniform(0.6, 1.2))))
            out.append({"prompt": words(prompt, vocab, rng), "chosen": words(answer, vocab, rng),
                        "rejected": words(rejected, vocab, rng)})
            total += 2 * prompt + answer + rejected
    path.write_text("".join(json.dumps(r) + "\n" for r in out))
    return total / rows / (1 if recipe == "sft" else 2)


def sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


class StepClock(TrainerCallback):
    """Wall time and real tokens of every optimizer step."""

    def __init__(self):
        self.times, self.tokens, self._tokens, self.window = [], [], 0, [None, None]

    def count(self, inputs) -> None:
        if "attention_mask" in inputs:
            self._tokens += int(inputs["attention_mask"].sum())
        else:  # a padding-free row (TRL's SFT packing): every token is real
            self._tokens += inputs["input_ids"].numel()

    def on_step_begin(self, args, state, control, **kwargs):
        sync()
        self.start, self._tokens = time.perf_counter(), 0

    def on_step_end(self, args, state, control, **kwargs):
        sync()
        self.times.append(time.perf_counter() - self.start)
        self.tokens.append(self._tokens)


@contextlib.contextmanager
def timed_precompute(trainer_class, seconds: list):
    """Time DPO's reference log-prob pass, which runs inside the trainer's constructor."""
    original = getattr(trainer_class, "_precompute_ref_logps", None)
    if original is None:
        yield
        return

    def wrapper(self, *args, **kwargs):
        sync()
        start = time.perf_counter()
        out = original(self, *args, **kwargs)
        sync()
        seconds.append(time.perf_counter() - start)
        return out

    trainer_class._precompute_ref_logps = wrapper
    try:
        yield
    finally:
        trainer_class._precompute_ref_logps = original


def flops_per_token(shape: str, parameters: int, mean_len: float) -> float:
    config = shape_config(shape)
    return 6 * parameters + 6 * config.num_hidden_layers * config.hidden_size * mean_len


def run_variant(recipe: str, variant: str, shape: str, model_dir: Path, data: Path, mean_len: float, a) -> dict:
    from align_proxy.kinds import recipe_kind
    from align_proxy.recipe import make_parser, prepare_run

    trainer_class = recipe_kind(recipe).trainer_class
    out = Path(tempfile.mkdtemp(prefix=f"throughput-{recipe}-{variant}-"))
    argv = ["--model_name_or_path", str(model_dir), "--dataset_name", str(data), "--output_dir", str(out),
            "--max_length", str(a.max_len), "--max_steps", str(a.warmup + a.steps), "--learning_rate", "1e-5",
            "--logging_steps", "100000", "--save_strategy", "no", "--eval_strategy", "no", "--report_to", "none",
            "--eval_before", "false", "--disable_tqdm", "true", "--seed", "0",
            "--proxy_speed", "true" if variant == "align-proxy" else "false"]
    if a.batch:  # the same rows for both variants, so the ratio is the implementation's, not a batch size's
        argv += ["--per_device_train_batch_size", str(a.batch)]
    argv += shlex.split(a.extra) if variant == "align-proxy" else []
    script_args, training_args, model_args = make_parser(recipe).parse_args_and_config(argv)
    precompute: list[float] = []
    start = time.perf_counter()
    run = prepare_run(recipe, script_args, training_args, model_args)
    clock = StepClock()
    kwargs = run.trainer_kwargs()
    kwargs["callbacks"] = [*kwargs["callbacks"], clock]
    with timed_precompute(trainer_class, precompute):
        trainer = trainer_class(**kwargs)
    setup_s = time.perf_counter() - start
    step = trainer.training_step

    def counted_step(model, inputs, *args, **kw):
        clock.count(inputs)
        return step(model, inputs, *args, **kw)

    trainer.training_step = counted_step
    if a.barrier:  # a concurrent run: start training together with the others, once all are set up
        Path(a.barrier, f"ready-{os.getpid()}").touch()
        while not Path(a.barrier, "go").exists():
            time.sleep(0.05)
    if CUDA:
        torch.cuda.reset_peak_memory_stats()
    sync()
    clock.window[0] = time.time()
    trainer.train()
    clock.window[1] = time.time()
    times, tokens = clock.times[a.warmup:], clock.tokens[a.warmup:]
    seconds, count = sum(times), sum(tokens)
    tps = count / seconds
    row = {"recipe": recipe, "shape": shape, "variant": variant, "tokens_per_s": round(tps),
           "mfu": round(tps * flops_per_token(shape, run.model.parameters, mean_len) / (a.peak_tflops * 1e12), 4),
           "step_s": round(seconds / len(times), 4), "tokens_per_step": round(count / len(times)),
           "rows_per_step": training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps,
           "warmup_s": round(sum(clock.times[:a.warmup]), 2), "setup_s": round(setup_s, 2),
           "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if CUDA else None,
           "speed_applied": sorted(run.speed.applied),
           "measured_window": [clock.window[1] - seconds, clock.window[1]]}
    if precompute:
        rows = len(run.data.train)
        per_row_precompute = sum(precompute) / rows
        per_row_train = seconds / len(times) / row["rows_per_step"]
        row["precompute_s"] = round(sum(precompute), 2)
        row["tokens_per_s_with_precompute"] = round(tps * per_row_train / (per_row_train + per_row_precompute))
    del trainer, run
    gc.collect()
    if CUDA:
        torch._dynamo.reset()
        torch.cuda.empty_cache()
    return row


def ratios(rows: list[dict]) -> list[dict]:
    out = []
    by = {(r["shape"], r["recipe"], r["variant"]): r for r in rows if "tokens_per_s" in r}
    for (shape, recipe, variant), fast in by.items():
        plain = by.get((shape, recipe, "trl-plain"))
        if variant != "align-proxy" or plain is None:
            continue
        fast_rate = fast.get("tokens_per_s_with_precompute", fast["tokens_per_s"])
        out.append({"shape": shape, "recipe": recipe, "speedup": round(fast["tokens_per_s"] / plain["tokens_per_s"], 2),
                    "speedup_with_precompute": round(fast_rate / plain["tokens_per_s"], 2)})
    return out


def table(rows: list[dict], speedups: list[dict]) -> str:
    speedup = {(s["shape"], s["recipe"]): s for s in speedups}
    lines = ["| shape | recipe | variant | tokens/s | MFU | step s | peak GiB | x plain TRL |", "|---" * 8 + "|"]
    for r in rows:
        if "tokens_per_s" not in r:
            lines.append(f"| {r['shape']} | {r['recipe']} | {r['variant']} | error: {r['error'][:80]} | | | | |")
            continue
        s = speedup.get((r["shape"], r["recipe"])) if r["variant"] == "align-proxy" else None
        ratio = "" if s is None else f"{s['speedup']}" + (f" ({s['speedup_with_precompute']} with precompute)"
                                                          if "precompute_s" in r else "")
        lines.append(f"| {r['shape']} | {r['recipe']} | {r['variant']} | {r['tokens_per_s']:,} | {r['mfu']:.1%} | "
                     f"{r['step_s']} | {r['peak_gib'] if r['peak_gib'] is not None else '-'} | {ratio} |")
    return "\n".join(lines)


def measure(a) -> dict:
    root = Path(tempfile.mkdtemp(prefix="throughput-"))
    rows = []
    prepared = {}
    for shape in a.shapes.split(","):
        model_dir = make_model_dir(shape, root / "models")
        for recipe in a.recipes.split(","):
            data = root / f"{shape}-{recipe}.jsonl"
            prepared[shape, recipe] = (model_dir, data, write_data(recipe, data, a.rows, a.max_len,
                                                                   shape_config(shape).vocab_size))
    # Every plain variant first: Liger patches transformers' Llama functions for the rest of the process.
    for variant in a.variants.split(","):
        for (shape, recipe), (model_dir, data, mean_len) in prepared.items():
            try:
                row = run_variant(recipe, variant, shape, model_dir, data, mean_len, a)
            except Exception as err:  # noqa: BLE001 - one failing variant should not hide the others' figures
                traceback.print_exc()
                row = {"recipe": recipe, "shape": shape, "variant": variant,
                       "error": f"{type(err).__name__}: {str(err)[:300]}"}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return {"results": rows, "ratios": ratios(rows)}


def concurrent(a) -> dict:
    """N copies of the align-proxy variant at once, each its own process, against one."""
    shape, recipe = a.shapes.split(",")[0], a.recipes.split(",")[0]
    report = []
    for n in (int(x) for x in a.concurrent.split(",")):
        outs = [Path(tempfile.mkdtemp(prefix="throughput-child-")) / "out.json" for _ in range(n)]
        barrier = Path(tempfile.mkdtemp(prefix="throughput-barrier-"))
        command = [sys.executable, __file__, "--shapes", shape, "--recipes", recipe, "--variants", "align-proxy",
                   "--batch", str(a.batch), "--max-len", str(a.max_len), "--steps", str(a.steps), "--warmup",
                   str(a.warmup), "--rows", str(a.rows), "--extra", a.extra, "--barrier", str(barrier)]
        children = [subprocess.Popen([*command, "--out", str(out)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL) for out in outs]
        # Release them together once all are set up (or some died), so their timed steps overlap.
        while len(list(barrier.glob("ready-*"))) + sum(c.poll() is not None for c in children) < n:
            time.sleep(0.05)
        (barrier / "go").touch()
        codes = [child.wait() for child in children]
        results = [json.loads(out.read_text())["results"][0] for out in outs if out.exists()]
        done = [r for r in results if "tokens_per_s" in r]
        if len(done) < n:
            report.append({"processes": n, "error": f"exit codes {codes}; {[r.get('error') for r in results]}"})
            continue
        # Aggregate over the span in which the measured steps of all N ran (their set-up is staggered).
        start = min(r["measured_window"][0] for r in done)
        end = max(r["measured_window"][1] for r in done)
        tokens = sum(r["tokens_per_s"] * (r["measured_window"][1] - r["measured_window"][0]) for r in done)
        report.append({"processes": n, "aggregate_tokens_per_s": round(tokens / (end - start)),
                       "sum_of_rates": sum(r["tokens_per_s"] for r in done),
                       "per_process_tokens_per_s": [r["tokens_per_s"] for r in done],
                       "peak_gib_each": [r["peak_gib"] for r in done]})
        print(json.dumps(report[-1]), flush=True)
    single = next((r["aggregate_tokens_per_s"] for r in report if r.get("processes") == 1 and "error" not in r), None)
    for r in report:
        if single and "aggregate_tokens_per_s" in r:
            r["vs_one"] = round(r["aggregate_tokens_per_s"] / single, 2)
    return {"concurrency": {"shape": shape, "recipe": recipe, "runs": report}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="62m,350m" if CUDA else "tiny", help="tiny, 62m, 350m (comma-separated)")
    parser.add_argument("--recipes", default="sft,dpo,reward")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--batch", type=int, default=16 if CUDA else 8,
                        help="rows (sequences, or preference pairs) per step for both variants; 0 lets each choose")
    parser.add_argument("--max-len", type=int, default=1024 if CUDA else 64)
    parser.add_argument("--steps", type=int, default=20 if CUDA else 4, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=5 if CUDA else 1, help="untimed first steps (compilation)")
    parser.add_argument("--rows", type=int, default=2000 if CUDA else 200, help="examples in each data file")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="the device's dense bf16 peak")
    parser.add_argument("--extra", default="", help="more recipe flags for the align-proxy variant, e.g. "
                                                    "'--torch_compile false'")
    parser.add_argument("--concurrent", default="", help="e.g. 1,2,4: aggregate throughput of N runs at once")
    parser.add_argument("--barrier", default="", help=argparse.SUPPRESS)  # set by --concurrent for its children
    parser.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "throughput.json"))
    a = parser.parse_args()

    device = torch.cuda.get_device_name() if CUDA else f"CPU ({torch.get_num_threads()} threads)"
    header = {"device": device, "torch": torch.__version__, "args": vars(a)}
    print(json.dumps({"device": device, "torch": torch.__version__}), flush=True)
    report = concurrent(a) if a.concurrent else measure(a)
    if "results" in report:
        print(json.dumps({"ratios": report["ratios"]}), flush=True)
        print(table(report["results"], report["ratios"]), flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({**header, **report}, indent=1))


if __name__ == "__main__":
    main()
