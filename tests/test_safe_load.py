"""Checkpoints cannot run code: a crafted `model_optim_rng.pt` is refused before anything in it is
called, while real Megatron checkpoints (Megatron enums in `args`, numpy RNG state) still load."""

import argparse
import builtins
import enum
import os
import random
import sys
import types

import numpy as np
import pytest
import torch

from align_proxy.cli import main as cli
from align_proxy.models.megatron import ConversionError, load_checkpoint
from align_proxy.models.safe_load import UnsafeCheckpointError, load_pickled
from support import Payload


def tiny_state() -> dict:
    return {"embedding.word_embeddings.weight": torch.randn(8, 4), "decoder.final_layernorm.weight": torch.ones(4)}


def save_checkpoint_with_args(path, args) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": tiny_state(), "iteration": 1, "args": args}, path)


@pytest.mark.parametrize("function", ["os.system", "builtins.exec"])
def test_a_checkpoint_whose_pickle_runs_code_is_refused_and_runs_nothing(function, tmp_path, capsys):
    marker = tmp_path / "pwned"
    payload = (Payload(os.system, f"touch {marker}") if function == "os.system"
               else Payload(builtins.exec, f"open({str(marker)!r}, 'w').close()"))
    checkpoint = tmp_path / "iter_0000001" / "mp_rank_00" / "model_optim_rng.pt"
    save_checkpoint_with_args(checkpoint, argparse.Namespace(num_layers=1, evil=payload))

    assert cli(["convert", str(checkpoint), str(tmp_path / "hf")]) == 2
    out = capsys.readouterr().out
    assert "was not loaded" in out and "could run code" in out and str(checkpoint) in out
    assert ("system" in out) if function == "os.system" else ("exec" in out)
    assert not marker.exists()
    assert not (tmp_path / "hf").exists()


def test_refusal_happens_before_unpickling_and_names_the_global(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "blob.pt"
    torch.save({"x": torch.zeros(1), "hook": Payload(builtins.exec, f"open({str(marker)!r}, 'w').close()")}, path)
    with pytest.raises(UnsafeCheckpointError, match="names builtins.exec"):
        load_pickled(path)
    assert not marker.exists()


def test_megatron_and_te_classes_become_stubs_and_are_never_imported(tmp_path):
    # A Transformer Engine enum (TE is not installed here): importable while saving, gone while loading.
    assert "transformer_engine" not in sys.modules
    module = types.ModuleType("transformer_engine")

    class AttnBackend(enum.Enum):
        auto = 5

    AttnBackend.__module__, AttnBackend.__qualname__ = module.__name__, "AttnBackend"
    module.AttnBackend = AttnBackend
    sys.modules[module.__name__] = module
    try:
        checkpoint = tmp_path / "model_optim_rng.pt"
        args = argparse.Namespace(num_layers=2, attention_backend=AttnBackend.auto)
        torch.save({"model": tiny_state(), "iteration": 7, "args": args,
                    "rng_state": [{"random_rng_state": random.getstate(), "np_rng_state": np.random.get_state(),
                                   "torch_rng_state": torch.get_rng_state()}]}, checkpoint)
    finally:
        del sys.modules[module.__name__]

    loaded = load_checkpoint(checkpoint)
    assert "transformer_engine" not in sys.modules
    assert loaded.iteration == 7 and loaded.args.num_layers == 2
    assert type(loaded.args.attention_backend).__name__ == "AttnBackend"
    assert loaded.args.attention_backend._args == (5,)  # inert: it only remembers its value
    assert torch.equal(loaded.state_dict["decoder.final_layernorm.weight"], torch.ones(4))


def test_numpy_rng_state_loads(tmp_path):
    path = tmp_path / "rng.pt"
    state = np.random.RandomState(3).get_state()
    torch.save({"np": state, "floats": np.arange(3.0)}, path)
    loaded = load_pickled(path)
    assert loaded["np"][0] == "MT19937" and np.array_equal(loaded["np"][1], state[1])
    assert np.array_equal(loaded["floats"], np.arange(3.0))


def test_a_truncated_checkpoint_is_still_reported_as_unreadable(tmp_path):
    checkpoint = tmp_path / "model_optim_rng.pt"
    save_checkpoint_with_args(checkpoint, argparse.Namespace(num_layers=1))
    checkpoint.write_bytes(checkpoint.read_bytes()[:200])
    with pytest.raises(ConversionError, match="truncated"):
        load_checkpoint(checkpoint)
