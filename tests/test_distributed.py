"""The distributed path: a real DeepSpeed ZeRO-2 engine over two CPU processes (gloo)."""

import json
import os
import subprocess
import sys

import pytest

from support import REPO

pytestmark = pytest.mark.slow  # trains real models


@pytest.mark.distributed
def test_dpo_under_deepspeed_zero2_on_two_cpu_processes(tiny_model, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}  # two ranks on two cores
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", "recipes/accelerate/deepspeed_cpu.yaml",
        "recipes/dpo.py", "--config", "recipes/configs/dpo_ladder_cpu.yaml",
        "--model_name_or_path", tiny_model, "--output_dir", str(tmp_path),
        "--max_steps", "4", "--builtin_train_size", "256", "--eval_size", "20", "--per_device_train_batch_size", "8",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    distributed = json.loads((tmp_path / "metrics.json").read_text())["train"]["distributed"]
    assert distributed == {"type": "DistributedType.DEEPSPEED", "num_processes": 2, "device": "cpu",
                           "engine": "DeepSpeedEngine", "zero_stage": 2}
    assert json.loads((tmp_path / "metrics.json").read_text())["train"]["global_step"] == 4
    assert (tmp_path / "model.safetensors").exists()
