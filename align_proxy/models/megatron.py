"""Reading and writing Megatron-LM checkpoints without Megatron installed.

A Megatron checkpoint is a `torch.save` of a dict with `model` (the state dict), `optimizer`,
`rng_state`, `iteration` and usually `args`, an argparse Namespace that references Megatron
classes. The file is read through an allow-list (`safe_load`): tensors, containers, plain values and
that Namespace load; every `megatron.*`, Transformer Engine or apex class becomes an inert stub, so
the file loads the same whether or not Megatron is importable and no Megatron code runs; any other
class or function the pickle names is refused, so a crafted checkpoint cannot run code.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch

from align_proxy.models.safe_load import UnsafeCheckpointError, load_pickled

CHECKPOINT_NAME = "model_optim_rng.pt"
TRACKER_NAME = "latest_checkpointed_iteration.txt"


class ConversionError(RuntimeError):
    """A checkpoint that cannot be converted; the message lists what was wrong."""


class _MegatronStub:
    """Stands in for any pickled Megatron object (enums, configs, functions): keeps its state."""

    _args: tuple = ()  # set when called (an enum's reduce); torch's loader builds classes with __new__

    def __init__(self, *args, **kwargs):
        self._args = args

    def __setstate__(self, state):
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self._state = state

    def __reduce__(self):
        # Writing a stubbed Namespace back out (HF -> Megatron) must not need Megatron either.
        return (_MegatronStub, self._args)


STUBBED_PACKAGES = ("megatron", "transformer_engine", "apex")


def _megatron_stub(full_name: str) -> type | None:
    """An inert stand-in for a Megatron, Transformer Engine or apex class; None (refuse) for anything else."""
    if full_name.split(".", 1)[0] not in STUBBED_PACKAGES:
        return None
    return type(full_name.rsplit(".", 1)[-1], (_MegatronStub,), {"__module__": __name__})


def locate_checkpoint(src: Path) -> Path:
    """The `model_optim_rng.pt` behind a file, an `iter_*` directory or a checkpoint root."""
    src = Path(src)
    if src.is_file():
        return src
    if (src / TRACKER_NAME).exists():
        marker = (src / TRACKER_NAME).read_text().strip()
        src = src / ("release" if marker == "release" else f"iter_{int(marker):07d}")
    if src.is_dir():
        candidates = sorted(src.glob(f"mp_rank_*/{CHECKPOINT_NAME}")) + sorted(src.glob(CHECKPOINT_NAME))
        if len(candidates) == 1:
            return candidates[0]
        if len(candidates) > 1:
            raise ConversionError(f"{src} holds {len(candidates)} model-parallel shards; only TP=1, PP=1 "
                                  "checkpoints (one mp_rank_00) are supported, as the CLIMB proxies are saved")
    raise ConversionError(f"no Megatron checkpoint at {src}: expected a {CHECKPOINT_NAME} file, an iter_* "
                          f"directory holding mp_rank_00/{CHECKPOINT_NAME}, or a root with {TRACKER_NAME}")


@dataclass
class MegatronCheckpoint:
    path: Path
    state_dict: dict[str, torch.Tensor]
    iteration: int | None
    args: object | None  # argparse.Namespace (or a stub of Megatron's) when the file has one


def load_checkpoint(src: Path) -> MegatronCheckpoint:
    path = locate_checkpoint(src)
    try:
        blob = load_pickled(path, stub=_megatron_stub)
    except UnsafeCheckpointError as err:
        raise ConversionError(str(err)) from err
    except Exception as err:  # noqa: BLE001 - zip, pickle and EOF errors all mean an unreadable file
        raise ConversionError(f"cannot read {path}: {type(err).__name__}: {err}. The file is truncated or not "
                              "a torch.save checkpoint; download it again.") from err
    if not isinstance(blob, dict) or "model" not in blob:
        keys = list(blob) if isinstance(blob, dict) else type(blob).__name__
        raise ConversionError(f"{path} is not a Megatron checkpoint: expected a dict with a 'model' state dict, "
                              f"found {keys}")
    state = {k: v for k, v in blob["model"].items() if isinstance(v, torch.Tensor)}
    return MegatronCheckpoint(path, state, blob.get("iteration"), blob.get("args"))


def save_checkpoint(state_dict: dict[str, torch.Tensor], args: argparse.Namespace, out_dir: Path,
                    iteration: int = 0) -> Path:
    """Write Megatron's checkpoint structure: `<out>/latest_checkpointed_iteration.txt` and
    `<out>/iter_XXXXXXX/mp_rank_00/model_optim_rng.pt` with model, iteration and args (no
    optimizer state: the HF model has none to give)."""
    out_dir = Path(out_dir)
    target = out_dir / f"iter_{iteration:07d}" / "mp_rank_00" / CHECKPOINT_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": state_dict, "iteration": iteration, "args": args, "checkpoint_version": 3.0}, target)
    (out_dir / TRACKER_NAME).write_text(str(iteration))
    return target
