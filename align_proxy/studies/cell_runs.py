"""What running one study cell means, whatever runs it (a process on this machine, `runner`, or a Slurm job,
`slurm`): its command line (by its kind, `align_proxy.kinds.CellKind`) and `accelerate launch` flags, how its end
is recorded in the store, and which queued cells can never run because the cell they start from left no model."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from align_proxy.checkpoints import remove_checkpoints
from align_proxy.kinds import cell_kind
from align_proxy.run_metrics import RunMetrics
from align_proxy.studies.spec import Cell
from align_proxy.studies.store import ResultStore

LOG_TAIL_CHARS = 2000


class StudyRunError(RuntimeError):
    """The study cannot run (already running, recipe scripts missing); the message says what to do."""


def cell_argv(cell: Cell, config: str, output_dir: Path, base_evals: Path, start_model: Path | None = None,
              reward_model: Path | None = None) -> list[str]:
    """A train cell's command line, its recipe script's: its config file, then every override as a flag; a cell that
    starts from another cell's model (`start_from`) gets that cell's directory as its model, and one trained against
    another cell's reward model (`reward_from`) that directory as its only reward."""
    argv = ["--config", config, "--output_dir", str(output_dir), "--base_eval_cache", str(base_evals)]
    overrides = {**cell.overrides, **({"model_name_or_path": str(start_model)} if start_model else {}),
                 **({"reward_funcs": [str(reward_model)]} if reward_model else {})}
    for key, value in overrides.items():
        values = value if isinstance(value, list) else [value]  # e.g. a grid over reward_funcs lists
        argv += [f"--{key}", *(str(v).lower() if isinstance(v, bool) else str(v) for v in values)]
    return argv


def proxy_cell_argv(cell: Cell, config: str | None, output_dir: Path, base_evals: Path | None, expert: Path,
                    reward_model: Path | None = None) -> list[str]:
    """A proxy-tuning cell's command line (`align_proxy.cells.proxy_tune`): the expert is the start cell's model."""
    params = cell.params
    return ["--base", cell.model, "--expert", str(expert), "--small", params.small, "--recipe", params.recipe,
            "--variant", params.variant, "--alpha", str(params.alpha), "--output_dir", str(output_dir)]


def best_of_n_cell_argv(cell: Cell, config: str | None, output_dir: Path, base_evals: Path | None,
                        policy: Path | None, reward_model: Path) -> list[str]:
    """A best-of-n cell's command line (`align_proxy.cells.best_of_n`): the policy is the start cell's model or the
    model the spec names."""
    params = cell.params
    argv = ["--policy", str(policy) if policy else params.policy, "--reward_model", str(reward_model),
            "--recipe", params.recipe, "--n", str(params.n), "--prompts", str(params.prompts), "--seed", str(cell.seed),
            "--temperature", str(params.temperature), "--max_new_tokens", str(params.max_new_tokens),
            "--task", params.task, "--output_dir", str(output_dir)]
    return argv + (["--gold", params.gold] if params.gold else [])


def cell_command(cell: Cell, script: Path, config: str, cell_dir: Path, base_evals: Path,
                 start_model: Path | None, reward_model: Path | None = None) -> tuple[str, list[str]]:
    """What runs a cell, whoever runs it (this machine or a Slurm job): its kind's entry module, or for a train cell
    its recipe's script, and the kind's command line."""
    kind = cell_kind(cell.kind)
    program = kind.entry_path or script
    return str(program), kind.argv(cell, config, cell_dir, base_evals, start_model, reward_model)


def read_metrics(path: Path) -> RunMetrics:
    return RunMetrics.from_json(json.loads(path.read_text()))


def settle_cell(store: ResultStore, cell_dir: Path, duration_s: float, failure: str | None) -> str:
    """Record how a cell ended, whatever ran it; returns its status: "done", "diverged" or "failed". `failure`:
    None when its process or job ended well (then metrics.json is its result), else why it did not."""
    metrics_path = cell_dir / "metrics.json"
    if failure is None and metrics_path.exists():
        status = store.record_result(cell_dir.name, read_metrics(metrics_path), duration_s)
        remove_checkpoints(cell_dir)  # the finished model is what stays; checkpoints only served a resume
        return status
    reason = failure or "the recipe exited without writing metrics.json"
    log = cell_dir / "cell.log"
    tail = log.read_text(errors="replace")[-LOG_TAIL_CHARS:] if log.exists() else ""
    store.record_failure(cell_dir.name, f"{reason}; log: {log}\n{tail}")
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


def stranded(queue: list[Cell], status: dict[str, str]) -> list[tuple[Cell, str]]:
    """Queued cells that can never run, and why: a cell they need (`Cell.needs`: the one they start from, the one
    their reward model comes from) failed or diverged (so left no model), or is itself stranded."""
    why = {h: ("diverged: it saved no model" if s == "diverged" else "failed") for h, s in status.items()
           if s in ("failed", "diverged")}
    found: list[tuple[Cell, str]] = []
    grew = True
    while grew:
        new = [(c, next(h for h in c.needs if h in why)) for c in queue
               if c.config_hash not in why and any(h in why for h in c.needs)]
        role = {True: "the cell it starts from", False: "the cell its reward model comes from"}
        found += [(c, f"{role[needed == c.start_from]} ({needed}) {why[needed]}") for c, needed in new]
        why |= {c.config_hash: "failed" for c, _ in new}
        grew = bool(new)
    return found


def startable(queue: list[Cell], status: dict[str, str]) -> list[Cell]:
    """Queued cells whose needed cells are all done, in queue order."""
    return [c for c in queue if all(status[h] == "done" for h in c.needs)]


def fail_stranded(queue: list[Cell], status: dict[str, str], store, settled) -> None:
    """Take the stranded cells out of `queue`, record each as failed with the reason and how to fix it, and tell
    `settled(config_hash, "failed")` (the local and the Slurm scheduler alike)."""
    for cell, why in stranded(queue, status):
        queue.remove(cell)
        store.record_failure(cell.config_hash, f"not run: {why}; fix that one, then rerun with --retry-failed")
        settled(cell.config_hash, "failed")


def needed_dirs(cell: Cell, cell_dir) -> tuple[Path | None, Path | None]:
    """The directories of the cells a cell starts from and takes its reward model from (`cell_dir(hash)`)."""
    return (cell_dir(cell.start_from) if cell.start_from else None,
            cell_dir(cell.reward_from) if cell.reward_from else None)
