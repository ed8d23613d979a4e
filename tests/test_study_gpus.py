"""Cells and GPUs: each running cell is pinned to one GPU through CUDA_VISIBLE_DEVICES, the least busy one,
and the forkserver the cells fork from never touches CUDA (a CUDA call there would break every cell)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from align_proxy.studies.execute import local
from align_proxy.studies.execute.local import GpuSlots, cells_per_gpu, default_jobs, visible_gpus
from align_proxy.studies.execute.scheduler import StudyRunError
from support import REPO


def test_cells_take_the_least_busy_gpu():
    slots = GpuSlots(["0", "1"])
    assert [slots.take(), slots.take(), slots.take()] == ["0", "1", "0"]  # a third cell shares the first card
    slots.give("1")
    assert slots.take() == "1"  # the freed card, not the one already running two cells
    slots.give("0")
    slots.give("0")
    assert slots.take() == "0"


def test_a_cell_of_several_processes_takes_that_many_distinct_gpus():
    slots = GpuSlots(["0", "1", "2", "3"])
    assert slots.take() == "0"
    assert slots.take(2) == "1,2"  # the idle cards, not the busy one
    assert slots.take(2) == "3,0"
    slots.give("1,2")
    assert slots.load == {"0": 2, "1": 0, "2": 0, "3": 1}


def test_a_cell_wider_than_the_machine_is_refused():
    with pytest.raises(StudyRunError, match="needs 8 GPUs; 2 are visible .*launch.num_processes"):
        GpuSlots(["0", "1"]).take(8)


def test_without_gpus_cells_get_none():
    slots = GpuSlots([])
    assert slots.take() is None
    slots.give(None)


def test_visible_gpus_follow_cuda_visible_devices(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3, GPU-5d1c")
    assert visible_gpus() == ["3", "GPU-5d1c"]  # the names this process was given, not 0..n-1
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert visible_gpus() == ["0", "1"]


def test_no_cuda_means_no_gpus_whatever_the_environment_says(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert visible_gpus() == []


def test_default_jobs_is_one_cell_per_gpu_else_per_core(monkeypatch):
    monkeypatch.setattr(local.os, "cpu_count", lambda: 6)
    assert default_jobs(["0", "1", "2", "3"]) == 4
    assert default_jobs([]) == 6
    # Cells of two processes each (`launch`): as many as fit side by side, never fewer than one.
    assert default_jobs(["0", "1", "2", "3"], processes=2) == 2
    assert default_jobs(["0", "1"], processes=4) == 1
    assert default_jobs([], processes=2) == 3


@pytest.mark.slow
def test_the_forkserver_preload_never_asks_cuda_anything():
    """CUDA cannot be used in a process forked after CUDA was initialised: if importing the preloaded modules
    called torch.cuda.is_available() (cudaGetDeviceCount), every cell on a GPU machine would fail."""
    probe = f"""
import sys, torch
calls = []
for name in ("is_available", "device_count", "init", "current_device", "get_device_name", "mem_get_info"):
    real = getattr(torch.cuda, name)
    setattr(torch.cuda, name, lambda *a, _n=name, _r=real, **k: calls.append(_n) or _r(*a, **k))
sys.path.insert(0, {str(REPO)!r})
import importlib
from align_proxy.kinds import KINDS
for module in dict.fromkeys(m for kind in KINDS.values() for m in kind.imports):
    importlib.import_module(module)
print("CALLS", calls)
"""
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "CALLS []" in result.stdout, result.stdout


def test_a_worker_of_a_launched_cell_dies_with_its_launcher(tmp_path):
    """A study cell of several processes is an `accelerate launch`; its workers must die with it, or a killed
    study would leave them writing into the cell directory a resumed study reuses."""
    worker = ("import os, sys, time; sys.path.insert(0, %r); from align_proxy.lifetime import die_with_study_cell; "
              "die_with_study_cell(); open(%r, 'w').write(str(os.getpid())); time.sleep(60)")
    pid_file = tmp_path / "worker.pid"
    launcher = ("import os, subprocess, sys, time; os.environ['ALIGN_PROXY_CELL_PID'] = str(os.getpid()); "
                f"subprocess.Popen([sys.executable, '-c', {worker % (str(REPO), str(pid_file))!r}]); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", launcher])
    try:
        for _ in range(600):  # the worker writes its pid once it has asked to die with the launcher
            if pid_file.exists() and pid_file.read_text():
                break
            time.sleep(0.05)
        pid = int(pid_file.read_text())
        proc.kill()
        proc.wait()
        for _ in range(200):
            if not _alive(pid):
                break
            time.sleep(0.05)
        assert not _alive(pid)
    finally:
        proc.kill()


def test_a_worker_whose_launcher_is_already_gone_exits_at_once():
    worker = ("import os, sys; sys.path.insert(0, %r); os.environ['ALIGN_PROXY_CELL_PID'] = '1'; "
              "from align_proxy.lifetime import die_with_study_cell; die_with_study_cell(); sys.exit(0)") % str(REPO)
    assert subprocess.run([sys.executable, "-c", worker], timeout=60).returncode == 1


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has died and waits only for its parent's wait()


def test_cells_are_told_how_many_may_share_their_gpu():
    """Each cell sizes its micro-batch to its share of the GPU (align_proxy.speed): the most cells that least-busy
    placement can put on one GPU at once."""
    assert cells_per_gpu(["0", "1"], jobs=8) == 4 and cells_per_gpu(["0"], jobs=1) == 1
    assert cells_per_gpu(["0", "1", "2"], jobs=2, processes=2) == 2  # 4 processes over 3 GPUs
    assert cells_per_gpu([], jobs=4) == 1
