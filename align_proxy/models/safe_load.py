"""Reading `torch.save` files that come from elsewhere without running any code they name.

A pickle can name any importable function and have the unpickler call it (`os.system` included), so
checkpoints are read with torch's `weights_only` unpickler, which builds only tensors, storages,
torch's rebuild functions, containers and plain values, plus an allow-list of our own: argparse's
Namespace (Megatron's `args`) and the numpy pieces of a saved RNG state. A caller may also map
foreign classes to inert stubs (Megatron's enums and configs). Any other global in the file is
refused, by name, before unpickling starts: it is never imported, never called.
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path
from typing import Callable

import numpy as np
import torch


class UnsafeCheckpointError(RuntimeError):
    """A pickled file that names code outside the allow-list; the message lists what and where."""


def _numpy_rng_globals() -> list:
    """What `np.random.get_state()` (in every Megatron `rng_state`) and small arrays pickle to: an
    array rebuilder, ndarray, dtype and its per-type classes. None of them runs code from the file."""
    core = np._core if hasattr(np, "_core") else np.core
    dtype_classes = [getattr(np.dtypes, name) for name in dir(np.dtypes) if name.endswith("DType")]
    return [core.multiarray._reconstruct, np.ndarray, np.dtype, *dtype_classes]


def allowed_globals() -> list:
    """Globals allowed beyond torch's own `weights_only` set."""
    return [argparse.Namespace, *_numpy_rng_globals()]


def unsafe_globals(path: Path) -> list[str] | None:
    """The globals `path` names that neither torch nor `allowed_globals` allow, read without unpickling;
    None for torch's legacy non-zip format, which cannot be scanned (the `weights_only` loader still guards it)."""
    with torch.serialization.safe_globals(allowed_globals()):
        try:
            return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
        except ValueError:  # not a zip checkpoint: nothing to scan statically
            return None
        except pickle.UnpicklingError as err:  # opcodes torch.save never writes (pickle protocol 4's, say)
            raise UnsafeCheckpointError(
                f"{path} was not loaded: its pickle uses instructions a torch.save checkpoint does not ({err}), so "
                "what it would run cannot be checked. Use a checkpoint from a source you trust.") from err


def load_pickled(path: Path, stub: Callable[[str], type | None] = lambda name: None, map_location="cpu"):
    """`torch.load(path)` through the allow-list. `stub(full_name)` returns an inert class to stand in
    for a global the file names (e.g. every `megatron.*` class), or None to refuse it."""
    path = Path(path)
    unknown = unsafe_globals(path) or []
    stubs = {name: stub(name) for name in unknown}
    refused = [name for name, cls in stubs.items() if cls is None]
    if refused:
        raise UnsafeCheckpointError(
            f"{path} was not loaded: its pickle names {', '.join(refused)}, which unpickling would import and call "
            "(a checkpoint needs only tensors, containers and plain values), so loading it could run code. Use a "
            "checkpoint from a source you trust, or, if this file is yours, re-save its tensors alone "
            "(`torch.save({'model': state_dict})` or safetensors) from an environment you trust.")
    with torch.serialization.safe_globals(allowed_globals() + [(cls, name) for name, cls in stubs.items()]):
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as err:  # something the static scan could not see (legacy format)
            raise UnsafeCheckpointError(
                f"{path} was not loaded: it holds more than tensors, containers and plain values, and loading it "
                f"could run code ({str(err).splitlines()[0]}). Use a checkpoint from a source you trust, or re-save "
                "its tensors alone from an environment you trust.") from err
