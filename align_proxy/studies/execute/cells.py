"""What every executor does with one cell, whoever runs it (a process on this machine or a Slurm job): find the
directories of the cells it needs, give a launched cell its `accelerate launch` flags, and record how it ended."""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from align_proxy.checkpoints import remove_checkpoints
from align_proxy.run_metrics import METRICS_FILE, RunMetrics
from align_proxy.studies.store import ResultStore

if TYPE_CHECKING:  # the spec imports the model registry (torch): a Slurm job on its node never needs it
    from align_proxy.studies.spec import Cell

LOG_TAIL_CHARS = 2000
CAUSE_SEARCH_CHARS = 50_000  # how far back from a failed cell's log's end its cause is looked for
# A line that says why a process failed: a recipe's or the CLI's "error: ..." (a user error, exit code 2), or the
# exception line that ends a Python traceback, with torch.distributed's "[rankN]:" prefix under accelerate launch.
_CAUSE = re.compile(r"^(?:\[rank\d+\]:\s*)?(error: .+|[A-Za-z_][\w.]*(?:Error|Exception|Interrupt)(?:: .*)?)$")


def failure_cause(log_text: str) -> str | None:
    """The last line of a failed cell's log that names its cause (`OSError: [Errno 28] No space left on device`,
    `error: data.jsonl ...`), or None. It goes first in the cell's recorded error, so `--status` and the report
    say why, not just "exit code 1".

    >>> failure_cause("Traceback (most recent call last):\\n  ...\\nOSError: [Errno 28] No space left on device\\n")
    'OSError: [Errno 28] No space left on device'
    >>> failure_cause("[rank1]: torch.OutOfMemoryError: CUDA out of memory\\nW1207 exiting"), failure_cause("done")
    ('torch.OutOfMemoryError: CUDA out of memory', None)
    """
    for line in reversed(log_text.splitlines()):
        match = _CAUSE.match(line.strip())
        if match:
            return match.group(1)[:400]
    return None


def settle_cell(store: ResultStore, cell_dir: Path, duration_s: float, failure: str | None) -> str:
    """Record how a cell ended, whatever ran it; returns its status: "done", "diverged" or "failed". `failure`:
    None when its process or job ended well (then metrics.json is its result), else why it did not."""
    if failure is None and (cell_dir / METRICS_FILE).exists():
        status = store.record_result(cell_dir.name, RunMetrics.read(cell_dir), duration_s)
        remove_checkpoints(cell_dir)  # the finished model is what stays; checkpoints only served a resume
        return status
    reason = failure or "the recipe exited without writing metrics.json"
    log = cell_dir / "cell.log"
    text = log.read_text(errors="replace")[-CAUSE_SEARCH_CHARS:] if log.exists() else ""
    cause = failure_cause(text)
    headline = f"{reason}: {cause}" if cause else reason
    store.record_failure(cell_dir.name, f"{headline}; log: {log}\n{text[-LOG_TAIL_CHARS:]}")
    return "failed"


def launch_flags(launch: dict) -> list[str]:
    """The `accelerate launch` flags of a cell of several processes; [] for a plain cell. Each launch gets a
    free port for its processes' rendezvous, so concurrent cells never meet."""
    if not launch:
        return []
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return ["--config_file", launch["config_file"], "--num_processes", str(launch["num_processes"]),
            "--main_process_port", str(port)]


def needed_dirs(cell: Cell, cell_dir) -> tuple[Path | None, Path | None, Path | None]:
    """The directories of the cells a cell starts from, takes its reward model from and is judged by
    (`cell_dir(hash)`)."""
    return tuple(cell_dir(h) if h else None for h in (cell.start_from, cell.reward_from, cell.judge_from))
