"""The offline ladder: tiny CLIMB-shaped base models, pretrained here on a built-in corpus.

Every rung has the proxies' architecture (LlamaForCausalLM: RMSNorm, SwiGLU, RoPE, grouped-query
attention with three query heads per KV head, tied embeddings) and their deep-and-narrow build
(8 layers over widths of 48-144, against the proxies' 32 over 384-960). Rungs differ in width only
and see the same tokens in the same order, as in Pythia-style suites, so any difference between
them is one of scale. A build is deterministic for a seed and cached under a fingerprint of its
spec; a rung is written to a temporary directory and renamed, so a killed build leaves nothing
half-written.

A build is also the same on every x86-64 processor: pretraining runs in a child process on one thread with
ATen's portable (non-vectorized) kernels and oneMKL's conditional numerical reproducibility
(`PORTABLE_KERNELS`). Left to themselves, ATen picks AVX2 or AVX-512 kernels and oneMKL its own code path per
processor, their sums run in another order, and another processor pretrained other base models.

What a ladder is (its spec, paths and table) is `align_proxy.models.ladder_spec`, which needs no torch; this module
pretrains.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from filelock import FileLock, Timeout
from tqdm.auto import tqdm
from transformers import LlamaForCausalLM

from align_proxy.data.tasks import get_task
from align_proxy.models.ladder_spec import (PORTABLE_KERNELS, LadderSpec, Rung, RungReport, count_parameters,
                                            ladder_dir, load_table, spec_from_json)
from align_proxy.models.tokenizer import EOS_ID, PAD_ID, build_tokenizer


def _token_rows(spec: LadderSpec, split: str, rows: int) -> torch.Tensor:
    """Pack `<s> line </s>` documents end to end into `rows` rows of `seq_len` tokens."""
    tokenizer = build_tokenizer()
    needed = rows * spec.seq_len
    # A line is ~8-12 tokens with its specials; draw enough lines to fill every row once.
    # to_dict, not list(dataset["text"]): that iterates the column row by row (2 s of the tiny ladder's build).
    lines = get_task(spec.task).pretraining_text(needed // 6 + 16, split=split, seed=spec.seed).to_dict()["text"]
    ids = tokenizer(lines, add_special_tokens=True)["input_ids"]
    stream = [token for doc in ids for token in (*doc, EOS_ID)]
    if len(stream) < needed:
        raise RuntimeError(f"corpus too short: {len(stream)} tokens for {needed}")
    return torch.tensor(stream[:needed], dtype=torch.long).view(rows, spec.seq_len)


def _lr_at(step: int, peak: float, spec: LadderSpec) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < spec.warmup_steps:
        return peak * (step + 1) / spec.warmup_steps
    progress = (step - spec.warmup_steps) / max(1, spec.steps - spec.warmup_steps)
    return peak * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def heldout_loss(model: LlamaForCausalLM, rows: torch.Tensor, batch_size: int = 32) -> float:
    model.eval()
    losses = [model(input_ids=chunk, labels=chunk).loss.item() for chunk in rows.split(batch_size)]
    return sum(losses) / len(losses)


def pretrain_rung(rung: Rung, spec: LadderSpec, train_rows: torch.Tensor, heldout_rows: torch.Tensor, out_dir: Path,
                  progress: bool = True, build: dict | None = None) -> RungReport:
    """Pretrain one rung from scratch with a plain AdamW loop and save it in Hugging Face format."""
    torch.manual_seed(spec.seed)
    model = LlamaForCausalLM(rung.config(len(build_tokenizer()), spec.max_positions))
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "embed" in n]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": spec.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=rung.learning_rate, betas=(0.9, 0.95),
    )
    order = torch.randperm(len(train_rows), generator=torch.Generator().manual_seed(spec.seed))
    started, ema = time.perf_counter(), None
    model.train()
    bar = tqdm(range(spec.steps), desc=f"pretrain {rung.name}", unit="step", disable=not progress, leave=True)
    for step in bar:
        batch = train_rows[order[step * spec.batch_size:(step + 1) * spec.batch_size]]
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, rung.learning_rate, spec)
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema = loss.item() if ema is None else 0.9 * ema + 0.1 * loss.item()
        if step % 10 == 0:
            bar.set_postfix(loss=f"{ema:.3f}")
    seconds = time.perf_counter() - started
    report = RungReport(
        name=rung.name,
        path=str(out_dir),
        parameters=count_parameters(model),
        hidden_size=rung.hidden_size,
        num_hidden_layers=rung.num_hidden_layers,
        heldout_loss=heldout_loss(model, heldout_rows),
        train_loss=float(ema),
        tokens=spec.steps * spec.batch_size * spec.seq_len,
        seconds=round(seconds, 1),
    )
    _save_atomically(model, report, spec, out_dir, build or {})
    return report


def _save_atomically(model: LlamaForCausalLM, report: RungReport, spec: LadderSpec, out_dir: Path,
                     build: dict) -> None:
    tmp = out_dir.with_name(out_dir.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.generation_config.pad_token_id = PAD_ID
    model.save_pretrained(tmp)
    build_tokenizer().save_pretrained(tmp)
    (tmp / "rung.json").write_text(json.dumps({**dataclasses.asdict(report), "spec": dataclasses.asdict(spec),
                                                "build": build}, indent=2))
    os.replace(tmp, out_dir)


def build_ladder(spec: LadderSpec = LadderSpec(), root: Path | None = None, force: bool = False,
                 progress: bool = True, only: tuple[str, ...] | None = None, threads: int = 1,
                 portable: bool = True) -> list[RungReport]:
    """Build every missing rung of `spec` (all of them with `force`; just `only` if given) and
    return the table of the rungs built so far.

    Rungs are independent (same data, own initialisation), so building one alone gives the same
    weights as building the whole ladder. Safe to call from several processes at once (every rank under
    `accelerate launch`, a test run's workers): each rung has its own file lock, and each process pretrains a
    rung no other is pretraining, then waits for the rest, so two processes build a two-rung ladder side by side.

    The default (one thread, portable kernels) builds the same weights on any x86-64 processor. `threads`
    and `portable=False` exist to check how much a study's answer depends on its base models: another
    thread count or the processor's own kernels add in another order and pretrain other rungs, as
    another processor once did (`rung.json` records which build made a rung).
    """
    directory = ladder_dir(spec, root)
    directory.mkdir(parents=True, exist_ok=True)
    pending = [r for r in spec.rungs if (only is None or r.name in only)
               and (force or not (directory / r.name / "rung.json").exists())]
    if pending and portable and not _kernels_are_portable():
        _pretrain_in_portable_process(spec, directory, [r.name for r in pending], threads, progress, force)
    elif pending:
        _build(spec, directory, pending, threads, progress, portable, force)
    return load_table(spec, root)


def _build(spec: LadderSpec, directory: Path, pending: list[Rung], threads: int, progress: bool, portable: bool,
           force: bool) -> None:
    """Pretrain the `pending` rungs, each under its own lock, skipping any another process built meanwhile."""
    pending = list(pending)
    while pending:
        rung, lock = _claim(directory, pending)
        try:
            if force or not (directory / rung.name / "rung.json").exists():
                _pretrain(spec, directory, rung, threads, progress, portable)
        finally:
            lock.release()
        pending.remove(rung)


def _claim(directory: Path, pending: list[Rung]) -> tuple[Rung, FileLock]:
    """The first pending rung no other process is building, its lock held; when every one is being built
    elsewhere, the first, its lock waited for (its builder releases it once the rung is written)."""
    for rung in pending:
        lock = FileLock(str(directory / f".{rung.name}.lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            continue
        return rung, lock
    lock = FileLock(str(directory / f".{pending[0].name}.lock"))
    lock.acquire()
    return pending[0], lock


def _kernels_are_portable() -> bool:
    return (torch.backends.cpu.get_cpu_capability() == "DEFAULT"
            and all(os.environ.get(k) == v for k, v in PORTABLE_KERNELS.items()))


def _pretrain(spec: LadderSpec, directory: Path, rung: Rung, threads: int, progress: bool, portable: bool) -> None:
    train_rows, heldout = _corpus(spec)
    build = {"threads": threads, "kernels": "portable" if portable else torch.backends.cpu.get_cpu_capability(),
             "torch": torch.__version__}
    with _threads(threads):
        shutil.rmtree(directory / rung.name, ignore_errors=True)
        pretrain_rung(rung, spec, train_rows, heldout, directory / rung.name, progress=progress, build=build)


@functools.lru_cache(maxsize=1)
def _corpus(spec: LadderSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """The training and held-out token rows every rung of `spec` sees (the same tokens in the same order): built
    once per process, as they take seconds for the default ladder."""
    return _token_rows(spec, "train", spec.steps * spec.batch_size), _token_rows(spec, "test", spec.heldout_rows)


def _pretrain_in_portable_process(spec: LadderSpec, directory: Path, names: list[str], threads: int,
                                  progress: bool, force: bool) -> None:
    """Pretrain `names` in a child process started with `PORTABLE_KERNELS` (ATen and oneMKL read them once, at
    start-up, so this process cannot switch). The child claims each rung's lock as `build_ladder` does and writes it
    atomically, so a killed child leaves nothing half-written."""
    env = {**os.environ, **PORTABLE_KERNELS, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    command = [sys.executable, "-m", "align_proxy.models.ladder", json.dumps(dataclasses.asdict(spec)),
               str(directory), str(threads), "1" if progress else "0", "1" if force else "0", *names]
    result = subprocess.run(command, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"pretraining the ladder's rungs {', '.join(names)} failed (exit {result.returncode}) "
                           f"in its child process; its error is printed above")


@contextmanager
def _threads(count: int):
    """Pretrain on `count` CPU threads (one by default). How many threads split a matrix product changes the order
    its sums are added in, so a 2-core and a 4-core machine would pretrain different rungs from one seed; one
    thread also never stalls when other processes share the cores, which a multi-threaded step does badly at
    these sizes."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def rung_path(name: str, spec: LadderSpec = LadderSpec(), root: Path | None = None, build: bool = True) -> Path:
    """The directory of a rung, pretraining it first if it is not cached yet."""
    spec.rung(name)  # unknown names fail before any work
    path = ladder_dir(spec, root) / name
    if not (path / "rung.json").exists():
        if not build:
            raise FileNotFoundError(f"rung {name!r} is not built yet: run `align-proxy ladder build`")
        print(f"[align-proxy] {name} is not cached: pretraining it now (once) into {path}", flush=True)
        build_ladder(spec, root, only=(name,))
    return path


if __name__ == "__main__":
    # The child of `_pretrain_in_portable_process`: spec JSON, ladder directory, threads, progress, force, rung names.
    _spec = spec_from_json(sys.argv[1])
    if not _kernels_are_portable():
        sys.exit(f"the ladder's pretraining child started without portable kernels ({PORTABLE_KERNELS})")
    _build(_spec, Path(sys.argv[2]), [_spec.rung(n) for n in sys.argv[6:]], int(sys.argv[3]), sys.argv[4] == "1",
           portable=True, force=sys.argv[5] == "1")
