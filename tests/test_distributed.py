"""The distributed path: a study cell launched as a real DeepSpeed ZeRO-2 engine over two CPU processes (gloo),
the `accelerate launch recipes/dpo.py` a user runs, started by the study's local executor."""

import json
import subprocess
import sys

import pytest
import yaml

from support import REPO, rows

pytestmark = pytest.mark.slow  # trains a real model


@pytest.mark.distributed
def test_launched_study_cells_run_dpo_under_deepspeed_zero2_on_two_cpu_processes(tiny_ladder, tmp_path):
    config = dict(yaml.safe_load((REPO / "recipes/configs/dpo_ladder_cpu.yaml").read_text()),
                  max_steps=4, builtin_train_size=256, eval_size=20, per_device_train_batch_size=8)
    (tmp_path / "dpo.yaml").write_text(yaml.safe_dump(config))
    spec = {"name": "launched", "output_dir": str(tmp_path / "study"), "models": [r.path for r in tiny_ladder],
            "seeds": [0],
            "recipes": [{"recipe": "dpo", "config": str(tmp_path / "dpo.yaml"),
                         "launch": {"config_file": "recipes/accelerate/deepspeed_cpu.yaml"}}]}  # num_processes: 2
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    # One job: each cell's two processes get one core (one thread) each.
    result = subprocess.run([sys.executable, "-m", "align_proxy.cli", "study", str(tmp_path / "spec.yaml"),
                             "--jobs", "1", "--no-report"], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    cells = sorted((tmp_path / "study" / "cells").iterdir())
    assert len(cells) == 2
    for cell in cells:
        command = (cell / "command.txt").read_text()
        assert command.startswith("accelerate launch --config_file ") and "recipes/dpo.py" in command, command
        metrics = json.loads((cell / "metrics.json").read_text())
        assert metrics["train"]["distributed"] == {"type": "DistributedType.DEEPSPEED", "num_processes": 2,
                                                   "device": "cpu", "engine": "DeepSpeedEngine", "zero_stage": 2}
        assert metrics["train"]["global_step"] == 4
        assert (cell / "model.safetensors").exists()
    assert rows(tmp_path / "study" / "results.sqlite", "SELECT status FROM cells") == [("done",), ("done",)]
