"""Process lifetime: what a study's cells use so that none outlives the study (Linux's PR_SET_PDEATHSIG).

A study killed with `kill -9` must not leave cells writing into a directory the resumed study reuses. Each
cell process asks the kernel to kill it when its parent (the forkserver, which exits with the study) goes; a
cell of several processes is an `accelerate launch` in that same process, and its workers, started by the
launcher, ask the same of the launcher when they see `ALIGN_PROXY_CELL_PID` (set by the study runner).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

CELL_PID = "ALIGN_PROXY_CELL_PID"  # the pid of the study cell that launched this process
# How many study cells share this process's GPU (set by the study's local executor; the speed plan sizes the
# micro-batch to its share of the free memory).
CELLS_PER_GPU = "ALIGN_PROXY_CELLS_PER_GPU"
_PR_SET_PDEATHSIG = 1


def die_with_parent(expected_parent: int | None = None) -> None:
    """Have the kernel SIGKILL this process when its parent exits; exit now if the parent is already gone
    (or is not `expected_parent`, the process that started us). No-op off Linux."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid() if expected_parent is None else expected_parent
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request took effect: we were re-parented
        os._exit(1)


def die_with_study_cell() -> None:
    """In a worker launched by a study cell (`launch` in the spec): die with the cell's launcher. Outside a
    study, or in a plain cell (which is itself the cell process), nothing happens."""
    launcher = os.environ.get(CELL_PID)
    if launcher and int(launcher) != os.getpid():
        die_with_parent(int(launcher))
