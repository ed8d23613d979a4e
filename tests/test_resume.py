"""Exact resume: a recipe killed with SIGKILL after a checkpoint, then resumed, ends with weights bit-identical
to an uninterrupted run with the same seed; so does a study cell killed mid-training when the study reruns."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml
from safetensors.torch import load_file

from align_proxy.checkpoints import CheckpointError, checkpoints, clear_for_attempt, is_complete, resume_point
from support import REPO, Payload

# Eight steps an epoch, 24 steps: the killed run stops inside the first epoch and the resumed one must replay
# the rest of that epoch's order and the next two shuffles exactly.
CONFIG = dict(yaml.safe_load((REPO / "recipes/configs/sft_ladder_cpu.yaml").read_text()),
              builtin_train_size=64, builtin_test_size=16, eval_size=16, per_device_train_batch_size=8, max_steps=24,
              logging_steps=4, save_strategy="steps", save_steps=4, warmup_steps=2)
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread everywhere: the same kernels in every process
TIMEOUT = 300  # seconds: generous for a loaded machine; every wait below polls a condition, none sleeps blindly


def write_config(tmp: Path) -> Path:
    path = tmp / "sft_resume.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    return path


def recipe_command(config: Path, model: str, out: Path, *extra: str) -> list[str]:
    return [sys.executable, str(REPO / "recipes" / "sft.py"), "--config", str(config), "--model_name_or_path", model,
            "--output_dir", str(out), *extra]


def wait_for(condition, what: str, timeout: float = TIMEOUT, process: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if process is not None and process.poll() is not None:
            pytest.fail(f"the process ended (exit {process.returncode}) before {what}")
        time.sleep(0.02)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def first_complete_checkpoint(directory: Path):
    return next((c for c in checkpoints(directory) if is_complete(c)), None) if directory.is_dir() else None


def freeze(pid: int) -> list[psutil.Process]:
    """Stop a process and everything below it (so the state read next is the state killed), return them all."""
    root = psutil.Process(pid)
    tree = [root, *root.children(recursive=True)]
    for proc in tree:
        try:
            proc.send_signal(signal.SIGSTOP)
        except psutil.NoSuchProcess:
            pass
    return tree


def kill_tree(tree: list[psutil.Process]) -> None:
    for proc in tree:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    gone, alive = psutil.wait_procs(tree, timeout=60)
    assert not alive, f"processes survived SIGKILL: {alive}"


def weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


def assert_bit_identical(a: Path, b: Path) -> None:
    first, second = weights(a), weights(b)
    assert first.keys() == second.keys()
    different = [k for k in first if not torch.equal(first[k], second[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def losses(directory: Path) -> list[tuple[int, float]]:
    history = json.loads((directory / "metrics.json").read_text())["train"]["log_history"]
    return [(h["step"], h["loss"]) for h in history if "loss" in h]


@pytest.fixture(scope="module")
def reference(tiny_model, tmp_path_factory) -> Path:
    """An uninterrupted run (it saves checkpoints too, so both runs do the same work)."""
    out = tmp_path_factory.mktemp("resume") / "uninterrupted"
    subprocess.run(recipe_command(write_config(out.parent), tiny_model, out), env=ENV, check=True, timeout=TIMEOUT,
                   capture_output=True)
    return out


@pytest.mark.slow  # three recipe processes, ~20 s
def test_a_recipe_killed_after_a_checkpoint_resumes_bit_identically(reference, tiny_model, tmp_path):
    config, out = write_config(tmp_path), tmp_path / "killed"
    run = subprocess.Popen(recipe_command(config, tiny_model, out), env=ENV, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: first_complete_checkpoint(out), "the first checkpoint", process=run)
        tree = freeze(run.pid)
        assert not (out / "metrics.json").exists(), "the run finished before it could be killed"
        kill_tree(tree)
    finally:
        run.kill()
        run.wait()
    last = Path(resume_point(out, "true"))
    assert int(last.name.split("-")[1]) < CONFIG["max_steps"]
    saved_at = (last / "trainer_state.json").stat().st_mtime_ns
    resumed = subprocess.run(recipe_command(config, tiny_model, out, "--resume_from_checkpoint", "true"), env=ENV,
                             timeout=TIMEOUT, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # It resumed rather than started over (which, seeded, would end the same): the steps up to that checkpoint
    # were not trained, nor saved, again.
    assert (last / "trainer_state.json").stat().st_mtime_ns == saved_at
    assert_bit_identical(out, reference)
    assert losses(out) == losses(reference)


@pytest.mark.slow  # two study runs, each starting its forkserver, ~40 s
def test_a_killed_study_cell_resumes_from_its_checkpoint_and_matches(reference, tiny_ladder, tiny_model, tmp_path):
    config = write_config(tmp_path)
    spec = {"name": "resume", "output_dir": str(tmp_path / "study"), "models": [r.path for r in tiny_ladder],
            "seeds": [0], "recipes": [{"recipe": "sft", "config": str(config)}]}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    # One cell per core, so each runs single-threaded as the reference did.
    command = [sys.executable, "-m", "align_proxy.cli", "study", str(tmp_path / "spec.yaml"), "--jobs",
               str(os.cpu_count() or 1), "--no-report"]
    cells = tmp_path / "study" / "cells"

    def cell_mid_training():
        for cell in (cells.iterdir() if cells.is_dir() else []):
            if first_complete_checkpoint(cell) and not (cell / "metrics.json").exists():
                return cell
        return None

    runner = subprocess.Popen(command, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(cell_mid_training, "a cell with a checkpoint", process=runner)
        tree = freeze(runner.pid)
        killed = cell_mid_training()
        assert killed is not None, "every cell finished before the study could be killed"
        kill_tree(tree)
    finally:
        runner.kill()
        runner.wait()
    rerun = subprocess.run(command, cwd=REPO, env=ENV, timeout=TIMEOUT, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-3000:]
    assert "--resume_from_checkpoint" in (killed / "command.txt").read_text()
    assert not checkpoints(killed)  # a finished cell keeps its model, not its checkpoints
    same_model = next(c for c in cells.iterdir() if json.loads((c / "metrics.json").read_text())["model"]["path"]
                      == tiny_model)
    assert_bit_identical(same_model, reference)
    assert losses(same_model) == losses(reference)
    trained = json.loads((same_model / "metrics.json").read_text())["eval"]["trained"]
    assert trained == json.loads((reference / "metrics.json").read_text())["eval"]["trained"]


def test_resume_true_without_a_checkpoint_and_a_half_saved_checkpoint_are_errors(tmp_path):
    with pytest.raises(CheckpointError, match="holds no complete checkpoint"):
        resume_point(tmp_path, "true")
    half = tmp_path / "checkpoint-4"
    half.mkdir()
    (half / "model.safetensors").write_text("")
    (half / "trainer_state.json").write_text('{"global_step": 4, "log_hi')  # killed while writing it
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        resume_point(tmp_path, str(half))
    assert resume_point(tmp_path, "false") is None and resume_point(tmp_path, None) is None


def test_a_new_attempt_keeps_complete_checkpoints_only(tmp_path):
    for step in (2, 4, 6):
        (tmp_path / f"checkpoint-{step}").mkdir()
        if step < 6:  # checkpoint-6 was being written when the attempt was killed
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (tmp_path / "model.safetensors").write_text("half")
    (tmp_path / "cell.log").write_text("old")
    assert clear_for_attempt(tmp_path) == tmp_path / "checkpoint-4"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2", "checkpoint-4"]


def test_a_deepspeed_checkpoint_that_would_run_code_is_refused_before_resuming(tmp_path):
    checkpoint, marker = tmp_path / "checkpoint-2", tmp_path / "pwned"
    (checkpoint / "global_step2").mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": 2}))
    optim = checkpoint / "global_step2" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    torch.save({"optimizer_state_dict": {"state": {}}, "hook": Payload(os.system, f"touch {marker}")}, optim)
    with pytest.raises(CheckpointError, match="names posix.system: DeepSpeed unpickles"):
        resume_point(tmp_path, "true")
    torch.save({"optimizer_state_dict": {"state": {0: torch.zeros(2)}}, "ds_version": "0.16"}, optim)
    assert resume_point(tmp_path, "true") == str(checkpoint)
    assert not marker.exists()
