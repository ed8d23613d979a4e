"""Training throughput of the SFT, DPO and reward recipes against plain TRL, in the same process, on random weights.

For each shape and recipe, variants train on the same data with the same max length:

- `trl-plain`: the recipe with `--proxy_speed false`, i.e. TRL's defaults (gradient checkpointing on, padded
  batches, DPO's reference model run beside the policy), at `--batch` rows a step;
- `align-proxy`: the recipe as shipped, with the proxy-speed defaults of align_proxy/speed.py for this machine, at
  the same `--batch` rows a step (the ratio between the two is the implementation's, not a batch size's);
- `align-proxy-own-batch`: the recipe with no batch flag at all: the micro-batch is the speed plan's choice for TRL's
  default global batch (align_proxy/speed.py keeps micro-batch x accumulation fixed).

And, per shape, `raw-loop`: a bare training loop on the same model (full packed rows of `--max-len` tokens, bf16
autocast, fused AdamW, `torch.compile` on a GPU), the hardware-bound reference each row is also reported against
(`x_raw`: 431k tokens/s for the 62M shape at 64 x 1024 on an H100, shared/bench/README.md).

Each is built exactly as `recipes/<recipe>.py` builds it: the recipe's parser over the flags a user would type,
`prepare_run` (data checked, speed defaults planned) and `run.apply_speed_plan()` (applied, run_config.yaml
written; no evaluation), then `Trainer(**run.trainer_kwargs())`; `--steps` optimizer steps are timed after
`--warmup` (compilation, allocator).
Data: random tokens (`t4 t17 ...`, a word-level tokenizer over the whole vocabulary) with a log-normal length
spread (median max_length/4, as shared/bench/anchor_trl.py).

One JSON line per variant: `tokens_per_s` counts the real (non-pad) tokens fed to the model (a DPO pair counts
its prompt twice, as the trainer runs it), over a window the host syncs with the device only at its two edges;
`mfu` is 6N (+ attention) FLOPs per token against `--peak-tflops` (989: H100 dense bf16), so a reference forward
is work done but not counted; `peak_gib` is the GPU's peak
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
VARIANTS = ("trl-plain", "align-proxy", "align-proxy-own-batch")
RAW = "raw-loop"


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
    """Wall time and real tokens of the timed window: the optimizer steps after the first `warmup`.

    The host waits for the device only at the window's two edges, and the tokens add up on the device, read once
    at the end: a sync at every step, or an `int(attention_mask.sum())` at every micro-step, would stall a
    launch-bound fast path (whose host runs ahead of the GPU) far more than the slow baseline."""

    def __init__(self, warmup: int):
        self.warmup, self.syncs = warmup, 0
        self.began = self.start = self.end = None
        self.window = [None, None]  # wall-clock edges (time.time), for concurrent runs
        self._device_tokens, self._host_tokens, self.steps = None, 0, 0

    def _sync(self) -> float:
        sync()
        self.syncs += 1
        return time.perf_counter()

    def count(self, inputs) -> None:
        if self.start is None:
            return
        if "attention_mask" in inputs:
            real = inputs["attention_mask"].sum()  # stays on the device: no sync
            self._device_tokens = real if self._device_tokens is None else self._device_tokens + real
        else:  # a padding-free row (TRL's SFT packing): every token is real
            self._host_tokens += inputs["input_ids"].numel()

    def _open(self) -> None:
        self.start, self.window[0] = self._sync(), time.time()

    def on_train_begin(self, args, state, control, **kwargs):
        self.began = self._sync()
        if self.warmup == 0:
            self._open()

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.warmup:
            self._open()

    def on_train_end(self, args, state, control, **kwargs):
        self.end, self.window[1] = self._sync(), time.time()
        self.steps = state.global_step - self.warmup

    @property
    def seconds(self) -> float:
        return self.end - self.start

    @property
    def warmup_seconds(self) -> float:
        return self.start - self.began

    @property
    def tokens(self) -> int:
        return self._host_tokens + (int(self._device_tokens) if self._device_tokens is not None else 0)


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
            "--proxy_speed", "true" if variant.startswith("align-proxy") else "false"]
    if a.batch and variant != "align-proxy-own-batch":  # the same rows for both, so the ratio is the implementation's
        argv += ["--per_device_train_batch_size", str(a.batch)]
    argv += shlex.split(a.extra) if variant.startswith("align-proxy") else []
    script_args, training_args, model_args = make_parser(recipe).parse_args_and_config(argv)
    precompute: list[float] = []
    start = time.perf_counter()
    run = prepare_run(recipe, script_args, training_args, model_args)
    run.apply_speed_plan()
    clock = StepClock(a.warmup)
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
    trainer.train()
    seconds, count, steps = clock.seconds, clock.tokens, clock.steps
    tps = count / seconds
    row = {"recipe": recipe, "shape": shape, "variant": variant, "tokens_per_s": round(tps),
           "mfu": round(tps * flops_per_token(shape, run.model.parameters, mean_len) / (a.peak_tflops * 1e12), 4),
           "step_s": round(seconds / steps, 4), "tokens_per_step": round(count / steps),
           "micro_batch": training_args.per_device_train_batch_size,
           "rows_per_step": training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps,
           "warmup_s": round(clock.warmup_seconds, 2), "setup_s": round(setup_s, 2),
           "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if CUDA else None,
           "speed_applied": sorted(run.speed.applied), "host_syncs": clock.syncs,
           "measured_window": clock.window}
    if precompute:
        rows = len(run.data.train)
        per_row_precompute = sum(precompute) / rows
        per_row_train = seconds / steps / row["rows_per_step"]
        row["precompute_s"] = round(sum(precompute), 2)
        row["tokens_per_s_with_precompute"] = round(tps * per_row_train / (per_row_train + per_row_precompute))
    del trainer, run
    gc.collect()
    if CUDA:
        torch._dynamo.reset()
        torch.cuda.empty_cache()
    return row


def raw_loop(shape: str, model_dir: Path, a) -> dict:
    """The hardware-bound reference: full packed rows of `--max-len` tokens through a bare loop (bf16 autocast,
    fused AdamW, the whole model under `torch.compile` on a GPU), timed between two syncs after 3 warm-up steps."""
    from transformers import LlamaForCausalLM

    device = "cuda" if CUDA else "cpu"
    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device)
    model.config.use_cache = False
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=CUDA)
    step_model = torch.compile(model) if CUDA else model
    batch = torch.randint(4, model.config.vocab_size, (a.raw_rows, a.max_len), device=device)

    def step():
        with torch.autocast(device, dtype=torch.bfloat16, enabled=CUDA):
            loss = step_model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    if CUDA:
        torch.cuda.reset_peak_memory_stats()
    sync()
    began = time.perf_counter()
    for _ in range(3):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(a.steps):
        step()
    sync()
    seconds = time.perf_counter() - start
    tps = a.raw_rows * a.max_len * a.steps / seconds
    parameters = sum(p.numel() for p in model.parameters())
    row = {"recipe": "sft", "shape": shape, "variant": RAW, "tokens_per_s": round(tps),
           "mfu": round(tps * flops_per_token(shape, parameters, a.max_len) / (a.peak_tflops * 1e12), 4),
           "step_s": round(seconds / a.steps, 4), "rows_per_step": a.raw_rows, "warmup_s": round(start - began, 2),
           "compiled": CUDA, "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if CUDA else None}
    del model, optimizer, step_model
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


def of_raw_loop(rows: list[dict]) -> None:
    """Each measured row's tokens/s as a fraction of the raw loop's on the same shape (`x_raw`), in place."""
    raw = {r["shape"]: r["tokens_per_s"] for r in rows if r.get("variant") == RAW and "tokens_per_s" in r}
    for r in rows:
        if "tokens_per_s" in r and r["shape"] in raw:
            r["x_raw"] = round(r["tokens_per_s"] / raw[r["shape"]], 3)


def table(rows: list[dict], speedups: list[dict]) -> str:
    speedup = {(s["shape"], s["recipe"]): s for s in speedups}
    plain = {(r["shape"], r["recipe"]): r["tokens_per_s"] for r in rows
             if r.get("variant") == "trl-plain" and "tokens_per_s" in r}
    lines = ["| shape | recipe | variant | rows/step (micro) | tokens/s | MFU | step s | peak GiB | x plain TRL | "
             "x raw loop |", "|---" * 10 + "|"]
    for r in rows:
        if "tokens_per_s" not in r:
            lines.append(f"| {r['shape']} | {r['recipe']} | {r['variant']} | | error: {r['error'][:80]} | | | | | |")
            continue
        s = speedup.get((r["shape"], r["recipe"])) if r["variant"] == "align-proxy" else None
        ratio = "" if s is None else f"{s['speedup']}" + (f" ({s['speedup_with_precompute']} with precompute)"
                                                          if "precompute_s" in r else "")
        if r["variant"] == "align-proxy-own-batch" and (r["shape"], r["recipe"]) in plain:
            ratio = f"{r['tokens_per_s'] / plain[r['shape'], r['recipe']]:.2f}"
        batch = f"{r['rows_per_step']} ({r.get('micro_batch', r['rows_per_step'])})"
        lines.append(f"| {r['shape']} | {r['recipe']} | {r['variant']} | {batch} | {r['tokens_per_s']:,} | "
                     f"{r['mfu']:.1%} | {r['step_s']} | {r['peak_gib'] if r['peak_gib'] is not None else '-'} | "
                     f"{ratio} | {r.get('x_raw', '')} |")
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
    for shape in a.shapes.split(",") if a.raw_rows else []:
        try:
            row = raw_loop(shape, prepared[shape, a.recipes.split(",")[0]][0], a)
        except Exception as err:  # noqa: BLE001 - as above
            traceback.print_exc()
            row = {"recipe": "sft", "shape": shape, "variant": RAW, "error": f"{type(err).__name__}: {str(err)[:300]}"}
        print(json.dumps(row), flush=True)
        rows.append(row)
    of_raw_loop(rows)
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
                   str(a.warmup), "--rows", str(a.rows), "--extra", a.extra, "--barrier", str(barrier),
                   "--raw-rows", "0"]
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
                        help="rows (sequences, or preference pairs) per step of trl-plain and align-proxy; 0 lets "
                             "each choose (align-proxy-own-batch always does)")
    parser.add_argument("--max-len", type=int, default=1024 if CUDA else 64)
    parser.add_argument("--steps", type=int, default=20 if CUDA else 4, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=5 if CUDA else 1, help="untimed first steps (compilation)")
    parser.add_argument("--rows", type=int, default=2000 if CUDA else 200, help="examples in each data file")
    parser.add_argument("--raw-rows", type=int, default=64 if CUDA else 4,
                        help="rows of --max-len tokens in each step of the raw loop; 0 skips it")
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
