"""Cells and GPUs: each running cell is pinned to one GPU through CUDA_VISIBLE_DEVICES, the least busy one,
and the forkserver the cells fork from never touches CUDA (a CUDA call there would break every cell)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from align_proxy.studies import runner
from align_proxy.studies.runner import GpuSlots, default_jobs, visible_gpus
from conftest import REPO


def test_cells_take_the_least_busy_gpu():
    slots = GpuSlots(["0", "1"])
    assert [slots.take(), slots.take(), slots.take()] == ["0", "1", "0"]  # a third cell shares the first card
    slots.give("1")
    assert slots.take() == "1"  # the freed card, not the one already running two cells
    slots.give("0")
    slots.give("0")
    assert slots.take() == "0"


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
    monkeypatch.setattr(runner.os, "cpu_count", lambda: 6)
    assert default_jobs(["0", "1", "2", "3"]) == 4
    assert default_jobs([]) == 6


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
from align_proxy.studies.runner import PRELOAD
for module in PRELOAD:
    importlib.import_module(module)
print("CALLS", calls)
"""
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "CALLS []" in result.stdout, result.stdout
