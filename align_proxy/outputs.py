"""A run's output directory: checked writable before any model loads, and a final model that appears
whole or not at all.

The final model is saved into a staging folder inside the output directory, then renamed into place
file by file with `config.json` last: `from_pretrained` needs that file, so a run killed while saving
leaves a directory that does not load as a model, never one that loads half-written weights. (The
run's own completion mark is `metrics.json`, written after.) A LoRA run saves its adapter beside the merged
model (`save_final_model`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from align_proxy.errors import UserInputError

STAGING_NAME = ".final-model.partial"
COMMIT_FILE = "config.json"  # what makes a directory a loadable model: moved last, removed first


class OutputDirError(UserInputError, RuntimeError):
    """An output directory the run cannot write; the message names it and what to do."""


def check_writable(output_dir: str | Path) -> Path:
    """Create `output_dir` if needed and prove a file can be written there, before hours of training
    end in a failed save."""
    path = Path(output_dir).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise OutputDirError(f"cannot write to output_dir {path} ({err.strerror or err}): choose a directory you can "
                             "write with --output_dir (nothing was loaded or trained)") from err
    return path


def staging_dir(output_dir: Path) -> Path:
    """Where the final model is saved before it is renamed into `output_dir` (every rank saves here)."""
    return Path(output_dir) / STAGING_NAME


def reset_staging(output_dir: Path) -> Path:
    """An empty staging folder: a killed run's partial save never mixes into this one."""
    staging = staging_dir(output_dir)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def publish_model(output_dir: Path) -> None:
    """Rename the staged model into `output_dir`: the old `config.json` goes first (the old model stops
    loading), every other file and folder next, the new `config.json` last."""
    output_dir, staging = Path(output_dir), staging_dir(output_dir)
    (output_dir / COMMIT_FILE).unlink(missing_ok=True)
    entries = sorted(staging.iterdir(), key=lambda p: p.name == COMMIT_FILE)  # config.json sorts last
    for entry in entries:
        target = output_dir / entry.name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)  # a folder (LoRA's adapter/) cannot be renamed over a non-empty one
        os.replace(entry, target)
    staging.rmdir()


def save_final_model(trainer, tokenizer, output_dir: Path) -> None:
    """Save the trained model in Hugging Face format, staged then published (every rank takes part); a LoRA run
    saves the adapter in `adapter/` and the merged model at the top, so the output loads with `from_pretrained`
    either way."""
    from accelerate import PartialState
    from peft import PeftModel

    is_main = PartialState().is_main_process
    if is_main:
        reset_staging(output_dir)
    PartialState().wait_for_everyone()
    staging = staging_dir(output_dir)
    trainer.save_model(str(staging))
    model = trainer.accelerator.unwrap_model(trainer.model)
    if isinstance(model, PeftModel) and is_main:
        model.save_pretrained(str(staging / "adapter"))
        model.merge_and_unload().save_pretrained(str(staging))
        for leftover in ("adapter_model.safetensors", "adapter_config.json"):
            (staging / leftover).unlink(missing_ok=True)
    if is_main:
        tokenizer.save_pretrained(str(staging))
        publish_model(output_dir)
    PartialState().wait_for_everyone()
