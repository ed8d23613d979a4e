"""Training checkpoints: which one a run resumes from, and what a study cell keeps between attempts.

The trainer writes `checkpoint-N/` in place and `trainer_state.json` last (after the weights, optimizer,
scheduler and RNG states), so a checkpoint is complete when that file parses and names step N; a run
killed while saving leaves one that is not, and it is never resumed from. Resuming restores weights,
optimizer, scheduler, RNG and the position in the (seeded) data order: on CPU a resumed run ends
bit-identical to an uninterrupted one (tests/test_resume.py).

What a resume reads is read safely: transformers loads weights from safetensors and the optimizer,
scheduler and RNG files with `weights_only`; DeepSpeed unpickles its own `global_step*/` files in
full, so before a resume hands them over, every class they name must be one a ZeRO checkpoint holds.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from align_proxy.errors import UserInputError

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
TRAINER_STATE = "trainer_state.json"
_TRUE, _FALSE = {"true", "yes", "1", "last", "latest"}, {"false", "no", "0", "none", ""}
# Beyond tensors and plain values, what DeepSpeed's ZeRO optimizer files pickle (read off a ZeRO-2 checkpoint).
DEEPSPEED_GLOBALS = {
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.utils.tensor_fragment.fragment_address",
}


class CheckpointError(UserInputError, ValueError):
    """A checkpoint that cannot be resumed from; the message names it and what to do."""


def step_of(path: Path) -> int | None:
    match = _CHECKPOINT.match(Path(path).name)
    return int(match.group(1)) if match else None


def is_complete(path: Path) -> bool:
    """`checkpoint-N/` whose trainer state (written last) parses and is at step N."""
    try:
        state = json.loads((Path(path) / TRAINER_STATE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(state, dict) and state.get("global_step") == step_of(path)


def checkpoints(output_dir: Path) -> list[Path]:
    """Every `checkpoint-N/` folder in `output_dir`, oldest step first."""
    output_dir = Path(output_dir)
    found = [p for p in output_dir.iterdir() if p.is_dir() and step_of(p) is not None] if output_dir.is_dir() else []
    return sorted(found, key=step_of)


def last_complete(output_dir: Path) -> Path | None:
    done = [p for p in checkpoints(output_dir) if is_complete(p)]
    return done[-1] if done else None


def resume_point(output_dir: str | Path, value) -> str | None:
    """What `--resume_from_checkpoint` means, resolved before the trainer sees it: true (or `last`) is the
    newest complete checkpoint in `output_dir`, a path is that checkpoint, false or unset starts fresh."""
    if value is None or value is False or (isinstance(value, str) and value.strip().lower() in _FALSE):
        return None
    if value is True or str(value).strip().lower() in _TRUE:
        last = last_complete(Path(output_dir))
        if last is None:
            raise CheckpointError(
                f"--resume_from_checkpoint {value}: {output_dir} holds no complete checkpoint (a checkpoint-N folder "
                f"with its {TRAINER_STATE}). Run without the flag to start fresh; runs leave checkpoints when "
                "save_strategy is 'steps' (see save_steps in the CLIMB configs).")
        check_deepspeed_files(last)
        return str(last)
    path = Path(value).expanduser()
    if not is_complete(path):
        raise CheckpointError(
            f"--resume_from_checkpoint {value}: not a complete checkpoint (expected a checkpoint-N folder holding "
            f"{TRAINER_STATE} at step N; a run killed while saving leaves an incomplete one). Pass an earlier "
            "checkpoint, or `true` for the newest complete one in --output_dir.")
    check_deepspeed_files(path)
    return str(path)


def check_deepspeed_files(checkpoint: Path) -> None:
    """Refuse a checkpoint whose DeepSpeed files name code beyond `DEEPSPEED_GLOBALS` (or cannot be scanned):
    DeepSpeed would import and call it while loading them."""
    # Imported here, not above: the scanner imports torch, which a Slurm job clearing its cell directory
    # (align_proxy.studies.execute.slurm) would otherwise pay seconds for before its recipe even starts.
    from align_proxy.models.safe_load import UnsafeCheckpointError, unsafe_globals

    for file in sorted(Path(checkpoint).glob("global_step*/*.pt")):
        try:
            names = unsafe_globals(file)
        except UnsafeCheckpointError as err:
            raise CheckpointError(str(err)) from err
        refused = ["an unscannable legacy-format pickle"] if names is None else sorted(set(names) - DEEPSPEED_GLOBALS)
        if refused:
            raise CheckpointError(
                f"{file} names {', '.join(refused)}: DeepSpeed unpickles its checkpoint files in full, so resuming "
                "would import and call it. Resume only from checkpoints your own runs wrote; if this one is, and the "
                "names are DeepSpeed's, add them to DEEPSPEED_GLOBALS in align_proxy/checkpoints.py.")


def clear_for_attempt(cell_dir: Path) -> Path | None:
    """Empty a study cell's directory for a new attempt, keeping its complete checkpoints: a killed attempt's
    model files, logs and incomplete checkpoints never mix into this one. Returns the newest checkpoint kept
    (the attempt resumes from it), or None."""
    cell_dir = Path(cell_dir)
    cell_dir.mkdir(parents=True, exist_ok=True)
    for entry in cell_dir.iterdir():
        if entry.is_dir() and step_of(entry) is not None and is_complete(entry):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    return last_complete(cell_dir)


def remove_checkpoints(output_dir: Path) -> None:
    """Delete every `checkpoint-N/` of a finished run (a 350M proxy's is ~4 GB with optimizer state)."""
    for checkpoint in checkpoints(output_dir):
        shutil.rmtree(checkpoint, ignore_errors=True)
