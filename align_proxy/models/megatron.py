"""Reading and writing Megatron-LM checkpoints without Megatron installed.

A Megatron checkpoint is a `torch.save` of a dict with `model` (the state dict), `optimizer`,
`rng_state`, `iteration` and usually `args`, an argparse Namespace that references Megatron
classes. Unpickling swaps every `megatron.*` class for an inert stub, so the file loads the same
whether or not Megatron is importable, and no Megatron code runs.
"""

from __future__ import annotations

import argparse
import pickle
import types
from dataclasses import dataclass
from pathlib import Path

import torch

CHECKPOINT_NAME = "model_optim_rng.pt"
TRACKER_NAME = "latest_checkpointed_iteration.txt"


class ConversionError(RuntimeError):
    """A checkpoint that cannot be converted; the message lists what was wrong."""


class _MegatronStub:
    """Stands in for any pickled Megatron object (enums, configs, functions): keeps its state."""

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


class _StubbingUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if module == "megatron" or module.startswith(("megatron.", "transformer_engine", "apex")):
            return type(name, (_MegatronStub,), {"__module__": __name__})
        return super().find_class(module, name)


# torch.load takes a pickle *module*; this one differs from `pickle` only in its Unpickler.
_stub_pickle = types.ModuleType("align_proxy_stub_pickle")
_stub_pickle.__dict__.update(Unpickler=_StubbingUnpickler, load=pickle.load, loads=pickle.loads)


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
        blob = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_stub_pickle)
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
