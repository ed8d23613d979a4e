"""What the offline ladder is, without building it: its spec (`LadderSpec`, its `Rung`s), where a build lives
and the table of the rungs built so far. Imports neither torch nor transformers, so reading a study spec or
resolving a rung's path stays quick; `align_proxy.models.ladder` pretrains."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from transformers import LlamaConfig


# Bump when a change to align_proxy/models/ladder.py changes the weights a spec produces: old caches then rebuild.
# 2: pretraining runs on one CPU thread (version 1 used every core, so the weights depended on the core count).
# 3: pretraining runs on the portable kernels (version 2's weights depended on the processor's instruction set).
LADDER_VERSION = 3

# The environment of the child process that pretrains: kernels whose results do not depend on the processor.
# ATEN_CPU_CAPABILITY=default takes ATen's scalar kernels instead of its AVX2 / AVX-512 ones (read once, when
# torch loads); MKL_CBWR=COMPATIBLE makes oneMKL's matrix products run one code path on any x86-64 processor,
# Intel's or AMD's (oneMKL's "conditional numerical reproducibility", which also needs a fixed thread count).
# Measured on a 2-core AMD EPYC (AVX2), 120 steps of ladder-s: each setting alone changes the weights, both
# together cost about 2.4x the time, and capping oneMKL's or oneDNN's instruction set
# (MKL_ENABLE_INSTRUCTIONS=SSE4_2, ONEDNN_MAX_CPU_ISA=SSE41) then leaves them bit for bit the same.
PORTABLE_KERNELS = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE"}


@dataclass(frozen=True)
class Rung:
    name: str
    hidden_size: int
    intermediate_size: int  # SwiGLU width, ~8/3 of hidden as in Llama and the proxies
    num_attention_heads: int
    num_key_value_heads: int
    # Wider rungs take a lower peak rate, as in Pythia's suite (roughly 1/sqrt(width) here).
    learning_rate: float = 3e-3
    num_hidden_layers: int = 8

    def config(self, vocab_size: int, max_positions: int) -> LlamaConfig:
        from transformers import LlamaConfig

        from align_proxy.models.tokenizer import BOS_ID, EOS_ID, PAD_ID

        return LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            head_dim=self.hidden_size // self.num_attention_heads,
            max_position_embeddings=max_positions,
            rms_norm_eps=1e-5,
            rope_theta=10000.0,
            tie_word_embeddings=True,
            attention_bias=False,
            mlp_bias=False,
            bos_token_id=BOS_ID,
            eos_token_id=EOS_ID,
            pad_token_id=PAD_ID,
        )


DEFAULT_RUNGS = (
    Rung("ladder-s", hidden_size=48, intermediate_size=128, num_attention_heads=3, num_key_value_heads=1,
         learning_rate=3e-3),
    Rung("ladder-m", hidden_size=96, intermediate_size=256, num_attention_heads=6, num_key_value_heads=2,
         learning_rate=2e-3),
    Rung("ladder-l", hidden_size=144, intermediate_size=384, num_attention_heads=9, num_key_value_heads=3,
         learning_rate=1.5e-3),
)


@dataclass(frozen=True)
class LadderSpec:
    """Everything that determines the ladder's weights; its fingerprint names the cache entry."""

    rungs: tuple[Rung, ...] = DEFAULT_RUNGS
    task: str = "arith"
    seed: int = 0
    # Tiny models learn arithmetic per optimizer step more than per token: many small batches.
    steps: int = 800
    batch_size: int = 16
    seq_len: int = 64
    warmup_steps: int = 40
    weight_decay: float = 0.1
    heldout_rows: int = 64
    max_positions: int = 256

    def fingerprint(self) -> str:
        blob = json.dumps({"version": LADDER_VERSION, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def rung(self, name: str) -> Rung:
        for rung in self.rungs:
            if rung.name == name:
                return rung
        raise KeyError(f"no rung {name!r} in the ladder: it has {', '.join(r.name for r in self.rungs)}")


@dataclass
class RungReport:
    name: str
    path: str
    parameters: int
    hidden_size: int
    num_hidden_layers: int
    heldout_loss: float
    train_loss: float
    tokens: int
    seconds: float


def cache_root() -> Path:
    """Where built models live: `$ALIGN_PROXY_HOME`, else `~/.cache/align-proxy`."""
    return Path(os.environ.get("ALIGN_PROXY_HOME", Path.home() / ".cache" / "align-proxy"))


def ladder_dir(spec: LadderSpec, root: Path | None = None) -> Path:
    return (root or cache_root()) / "ladder" / spec.fingerprint()


def count_parameters(model: torch.nn.Module) -> int:
    """Unique parameters, so a tied output head is counted once (as the proxies' cards do)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def load_table(spec: LadderSpec = LadderSpec(), root: Path | None = None) -> list[RungReport]:
    """The reports of the rungs already built, in ladder order."""
    directory = ladder_dir(spec, root)
    reports = []
    for rung in spec.rungs:
        meta = directory / rung.name / "rung.json"
        if meta.exists():
            data = json.loads(meta.read_text())
            data["path"] = str(directory / rung.name)
            # Keep the report's own fields only: rung.json also holds the spec, and a cache written by
            # an older version may carry fields since dropped (its weights are still valid).
            known = {f.name for f in dataclasses.fields(RungReport)}
            reports.append(RungReport(**{k: v for k, v in data.items() if k in known}))
    return reports


def spec_from_json(blob: str) -> LadderSpec:
    data = json.loads(blob)
    return LadderSpec(**{**data, "rungs": tuple(Rung(**r) for r in data["rungs"])})
