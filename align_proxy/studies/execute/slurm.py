"""The Slurm executor: study cells as Slurm jobs (`align-proxy study --executor slurm`), submitted through submitit.

The `align-proxy study` process stays the coordinator and the only writer of results.sqlite (SQLite's WAL mode is
not safe across hosts on a network filesystem): a job writes only its cell directory (model, metrics.json,
cell.log, job.json) and submitit's folder under `slurm/`, and the coordinator settles cells as it does the local
executor's. Cells of one recipe that are ready together go in one job array (they share the recipe's resources). Every
submission is recorded in the store before sbatch runs, under a name that is also the jobs' Slurm comment, so a
rerun reattaches to its jobs, even to those whose ids a killed coordinator never heard, and never submits a cell
twice. Job states come from squeue (`-t all` keeps an ended job's final state for MinJobAge seconds); with
accounting off, sacct and so submitit's own state are no help, and once squeue forgets a job its cell directory
and Slurm's line in the job's log say how it ended.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from submitit.helpers import Checkpointable

from align_proxy.checkpoints import clear_for_attempt, last_complete
from align_proxy.run_metrics import METRICS_FILE
from align_proxy.studies.execute.cells import launch_flags, needed_dirs, settle_cell

if TYPE_CHECKING:  # the spec imports the model registry (torch), which a job on its node never needs
    from align_proxy.studies.spec import Cell

JOB_RECORD = "job.json"  # in the cell directory: the job that ran the cell and the recipe's exit code
# States in which a job may still run (or requeue and run again): the coordinator waits on these.
ACTIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
          "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "SPECIAL_EXIT", "RESV_DEL_HOLD"}
# Why Slurm ended a job, by its final state (and by the words slurmstepd writes into the job's log).
ENDED_BY_SLURM = {
    "CANCELLED": "was cancelled (scancel, or an administrator)",
    "TIMEOUT": "hit its time limit (raise the recipe's slurm.time in the spec, or --slurm time=...)",
    "PREEMPTED": "was preempted and not requeued",
    "NODE_FAIL": "lost its node (node failure)",
    "BOOT_FAIL": "lost its node (boot failure)",
    "OUT_OF_MEMORY": "ran out of memory (raise the recipe's slurm.mem in the spec, or --slurm mem=...)",
    "DEADLINE": "missed its deadline",
}
LOG_WORDS = {"DUE TO TIME LIMIT": "TIMEOUT", "DUE TO PREEMPTION": "PREEMPTED", "DUE TO NODE FAILURE": "NODE_FAIL",
             "CANCELLED AT": "CANCELLED"}
NETWORK_FILESYSTEMS = ("nfs", "nfs4", "lustre", "gpfs", "beegfs", "cifs", "smb3", "ceph", "glusterfs", "panfs",
                       "wekafs", "9p", "virtiofs")


class SlurmUnavailable(RuntimeError):
    """This machine cannot submit Slurm jobs; the message says what to do."""


def require_slurm() -> None:
    """Fail at once, before any store or job exists, where sbatch/squeue/scancel are missing."""
    missing = [tool for tool in ("sbatch", "squeue", "scancel", "srun") if shutil.which(tool) is None]
    if missing:
        raise SlurmUnavailable(
            f"--executor slurm: {', '.join(missing)} not found on PATH, so this machine cannot submit Slurm jobs. "
            "Run the study from a cluster's login node, start a single-node Slurm here (as root, after `apt-get "
            "install -y slurm-wlm munge`: `align-proxy slurm-local start`), or use --executor local")


def shared_filesystem_warning(study_dir: Path) -> str | None:
    """Why the jobs' nodes may not see the study directory, if they may not: a cluster of several nodes and a
    directory on a local or memory filesystem. A single-node cluster (and any network filesystem) is fine."""
    try:
        nodes = subprocess.run(["sinfo", "-h", "-o", "%n"], capture_output=True, text=True, timeout=30).stdout.split()
    except (OSError, subprocess.TimeoutExpired):
        return None
    if len(set(nodes)) < 2:
        return None
    fstype = _filesystem_type(study_dir)
    if fstype is None or fstype.startswith("fuse") or fstype in NETWORK_FILESYSTEMS:
        return None
    return (f"the study directory {study_dir} is on a {fstype} filesystem, which is usually local to this machine, "
            f"and the cluster has {len(set(nodes))} nodes: jobs on other nodes will not see it. Put output_dir "
            "(or --output-dir) on a filesystem every node mounts (your home or project directory, usually NFS or "
            "Lustre)")


def _filesystem_type(path: Path) -> str | None:
    """The type of the mount that holds `path` (the longest mount point above it in /proc/mounts)."""
    path = Path(path).resolve()
    best, fstype = "", None
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return None
    for line in mounts:
        fields = line.split()
        mount = Path(fields[1]) if len(fields) > 2 else None
        if mount is not None and (path == mount or mount in path.parents) and len(fields[1]) > len(best):
            best, fstype = fields[1], fields[2]
    return fstype


# --- in the job, on the node --------------------------------------------------------------------------------------


class CellJob(Checkpointable):
    """A cell's Slurm job: on each node of the job (one task per node), clear a killed or preempted attempt's
    leftovers (node 0), resume from the newest complete checkpoint, and run the recipe script, or its
    `accelerate launch`, logging to the cell directory. Checkpointable: submitit requeues a preempted job, which
    resumes from the cell's checkpoints (a time limit ends it: max_num_timeout is 0)."""

    def __call__(self, script: str, argv: list[str], cell_dir: str, launch: dict) -> int:
        import submitit

        environment = submitit.JobEnvironment()
        cell, node = Path(cell_dir), environment.node
        checkpoint = clear_for_attempt(cell) if node == 0 else last_complete(cell)
        argv = [*argv, *(["--resume_from_checkpoint", str(checkpoint)] if checkpoint else [])]
        flags = job_launch_flags(launch, environment.hostnames, node, environment.job_id)
        command = [sys.executable, *(["-m", "accelerate.commands.launch", *flags] if launch else []), script, *argv]
        processes = int(launch.get("num_processes", 1)) // int(launch.get("num_machines", 1)) if launch else 1
        cpus = int(os.environ.get("SLURM_CPUS_PER_TASK") or os.cpu_count() or 1)
        # Slurm sets CUDA_VISIBLE_DEVICES to the job's GPUs; each process gets its share of the job's cores.
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, cpus // processes))}
        log_path = cell / ("cell.log" if node == 0 else f"cell.node{node}.log")
        if node == 0:  # the equivalent command, as the local runner writes it
            shown = ["accelerate", "launch", *flags] if launch else ["python"]
            (cell / "command.txt").write_text(" ".join([*shown, script, *argv]) + "\n")
        with open(log_path, "w") as log:
            log.write(f"[align-proxy] Slurm job {environment.job_id} on {environment.hostname} (node {node}): "
                      f"{' '.join(command)}\n")
            log.flush()
            exit_code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
        if node == 0:
            record = cell / f".{JOB_RECORD}.tmp"
            record.write_text(json.dumps({"job_id": environment.job_id, "exit_code": exit_code}))
            record.replace(cell / JOB_RECORD)
        if exit_code != 0:  # the job fails with the recipe, so Slurm says FAILED too
            raise RuntimeError(f"the recipe exited with code {exit_code}; log: {log_path}")
        return exit_code


def job_launch_flags(launch: dict, hostnames: list[str], node: int, job_id: str) -> list[str]:
    """`accelerate launch` flags for a launched cell inside its job: on one machine, the local runner's own (a
    free port); on several, accelerate's rendezvous from Slurm's environment: this node's SLURM_NODEID as
    machine_rank, the job's first host as the main address, a port derived from the job id (the same on every
    node, and different for jobs sharing a node)."""
    machines = int(launch.get("num_machines", 1)) if launch else 1
    if machines <= 1:
        return launch_flags(launch)
    base, _, task = str(job_id).partition("_")
    port = 20000 + (int(base) + int(task or 0)) % 20000
    return ["--config_file", launch["config_file"], "--num_processes", str(launch["num_processes"]),
            "--num_machines", str(machines), "--machine_rank", str(node), "--main_process_ip", hostnames[0],
            "--main_process_port", str(port)]


# --- in the coordinator -------------------------------------------------------------------------------------------


def job_parameters(resources, cell, name: str, batch: str) -> dict:
    """submitit's SlurmExecutor parameters for a cell of a recipe with these `SlurmResources`: one task per node,
    the cell's GPUs spread over its nodes."""
    machines = cell.machines
    gpus = resources.gpus(cell.processes)
    extra = {**({"mem": resources.mem} if resources.mem else {}), **resources.sbatch}
    parameters = {"job_name": name, "time": resources.minutes, "nodes": machines, "ntasks_per_node": 1,
                  "cpus_per_task": resources.cpus, "comment": batch, "additional_parameters": extra,
                  **({"gpus_per_node": gpus // machines} if gpus else {})}
    return parameters | {k: getattr(resources, k) for k in ("partition", "account", "qos", "constraint")
                         if getattr(resources, k)}


@dataclass
class TrackedJob:
    """A cell's job as the coordinator follows it."""

    config_hash: str
    job_id: str | None
    folder: str
    started: float
    state: str | None = None  # as squeue last listed it (None: not listed)

    def submitit_job(self):
        from submitit import SlurmJob

        return SlurmJob(folder=self.folder, job_id=self.job_id)


class JobStates(dict):
    """Job id -> Slurm state, as squeue listed them. An array task never split from its array (cancelled while
    the whole array was pending) is listed under the array's own id: a task's lookup falls back to it."""

    def of(self, job_id: str | None) -> str | None:
        if job_id is None:
            return None
        return self.get(job_id) or (self.get(job_id.split("_")[0]) if "_" in job_id else None)


def squeue_states() -> JobStates | None:
    """Every job of this user that the controller still knows, pending, running or recently ended (-t all), as
    id -> state, with array tasks one by one ("123_4"); None when squeue fails (the controller is unreachable:
    not a reason to fail a cell)."""
    found = _squeue("%i|%T")
    return None if found is None else JobStates(found)


def squeue_comments() -> dict[str, list[str]] | None:
    """Job ids by Slurm comment (this study's submission names), array tasks one by one."""
    found = _squeue("%i|%k")
    if found is None:
        return None
    by_comment: dict[str, list[str]] = {}
    for job_id, comment in found:
        by_comment.setdefault(comment, []).append(job_id)
    return by_comment


def _squeue(fields: str) -> list[tuple[str, str]] | None:
    try:
        out = subprocess.run(["squeue", "--me", "-r", "-h", "-t", "all", "-o", fields], capture_output=True, text=True,
                             timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return [tuple(line.split("|", 1)) for line in out.stdout.splitlines() if "|" in line]


def ended_reason(job: TrackedJob, state: str | None, cell_dir: Path) -> str:
    """Why a cell's job ended without a result: Slurm ended it (the state, or slurmstepd's words in the job's
    log once squeue has forgotten it), or the recipe failed (its exit code, from the job's record)."""
    if state is None or state not in ENDED_BY_SLURM:
        logged = _state_in_log(job)
        state = logged or state
    if state in ENDED_BY_SLURM:
        return f"Slurm job {job.job_id} {ENDED_BY_SLURM[state]} ({state})"
    record = _job_record(cell_dir, job.job_id)
    if record is not None:
        code = record["exit_code"]
        return "the recipe exited without writing metrics.json" if code == 0 else \
            (f"exit code {code}" if code > 0 else f"killed by signal {-code}")
    stderr = job.submitit_job().paths.stderr if job.job_id else None
    seen = f"Slurm state {state}" if state else "no longer known to squeue"
    return f"Slurm job {job.job_id} ended before the recipe ran ({seen}); job log: {stderr}"


def _job_record(cell_dir: Path, job_id: str | None) -> dict | None:
    try:
        record = json.loads((cell_dir / JOB_RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record if record.get("job_id") == job_id else None  # an earlier attempt's record says nothing of this one


def _state_in_log(job: TrackedJob) -> str | None:
    """slurmstepd's `*** JOB 12 ON node CANCELLED AT ... DUE TO TIME LIMIT ***` line in the job's stderr."""
    if not job.job_id:
        return None
    try:
        text = job.submitit_job().paths.stderr.read_text(errors="replace")
    except OSError:
        return None
    lines = [line for line in text.splitlines() if "***" in line and ("JOB" in line or "STEP" in line)]
    for line in reversed(lines):
        for words, state in LOG_WORDS.items():
            if words in line:
                return state
    return None


class SlurmExecutor:
    """Submitting, following, settling and cancelling a study's cells as Slurm jobs: cells of one recipe that are
    ready together go in one submission (a job array), and the jobs outlive the coordinator."""

    label = "study cells (Slurm jobs)"
    outlives_study = True

    def __init__(self, store, paths, scripts: dict[str, Path], configs: dict[str, str], resources: dict,
                 name: str, poll_s: float = 5.0):
        self.store, self.paths, self.scripts, self.configs = store, paths, scripts, configs
        self.resources, self.name, self.poll_s = resources, name, poll_s

    @property
    def folder(self) -> Path:
        return self.paths.root / "slurm" / "%j"  # submitit's files (sbatch script, logs, pickles) per job

    def resume(self, wanted: set[str], retry_failed: bool) -> tuple[dict[str, TrackedJob], int]:
        """Reattach to the jobs an earlier coordinator left (`reattach`), and put the rest of its running cells,
        the failed ones too when `retry_failed`, back in the queue. The jobs still queued or running, and how
        many cells ended meanwhile and were settled here."""
        running, settled = self.reattach(wanted)
        self.store.requeue(failed=retry_failed, keep=set(running))
        return running, len(settled)

    def concurrency(self, pending: list[Cell], jobs: int | None) -> int | None:
        """At most `jobs` cells queued or running at once; None: all of them (Slurm queues what waits)."""
        return jobs

    def batches(self, ready: list[Cell]) -> list[list[Cell]]:
        return [[c for c in ready if c.recipe == recipe] for recipe in dict.fromkeys(c.recipe for c in ready)]

    def submit(self, cells: list[Cell]) -> dict[str, TrackedJob]:
        """One sbatch for these cells (all of one recipe): a job, or a job array in this order."""
        import submitit
        from submitit.core.utils import FailedJobError, FailedSubmissionError

        from align_proxy.studies.cell_runs import cell_command

        first = cells[0]
        batch = f"align-proxy-{uuid.uuid4().hex[:12]}"
        executor = submitit.SlurmExecutor(folder=self.folder, max_num_timeout=0)
        executor.update_parameters(**job_parameters(self.resources[first.recipe], first,
                                                    f"{self.name}:{first.recipe}", batch))
        calls = []
        for cell in cells:
            cell_dir = self.paths.cell(cell.config_hash)
            clear_for_attempt(cell_dir)  # an earlier attempt's metrics.json or job.json never speaks for this one
            script, argv = cell_command(cell, self.scripts.get(cell.recipe), self.configs.get(cell.recipe), cell_dir,
                                        self.paths.base_evals, *needed_dirs(cell, self.paths.cell))
            calls.append((script, argv, str(cell_dir), cell.launch))
        self.store.mark_submitting([c.config_hash for c in cells], batch, str(self.folder))
        try:
            with executor.batch():
                jobs = [executor.submit(CellJob(), *call) for call in calls]
        except (FailedJobError, FailedSubmissionError, OSError) as err:  # sbatch refused: nothing was submitted
            why = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
            for cell in cells:
                self.store.record_failure(cell.config_hash, f"sbatch refused the job: {why}")
            raise SlurmUnavailable(f"sbatch refused the jobs of recipe {first.recipe}: {why}. Fix its slurm: resources "
                                   "in the spec (or --slurm), then rerun with --retry-failed") from None
        ids = [job.job_id for job in jobs]
        self.store.record_job_ids(batch, ids)
        now = time.time()
        return {cell.config_hash: TrackedJob(cell.config_hash, job_id, str(self.folder), now)
                for cell, job_id in zip(cells, ids)}

    def reattach(self, wanted: set[str]) -> tuple[dict[str, TrackedJob], list[tuple[str, str]]]:
        """The jobs of cells left running by an earlier coordinator: those Slurm still runs (or queues), to
        follow, and the settled outcome of those that ended meanwhile. A submission whose ids were never
        recorded is found by its name; one Slurm has never seen was never submitted, and its cells run again."""
        rows = [row for row in self.store.jobs(running_only=True) if row["config_hash"] in wanted]
        if not rows:
            return {}, []
        states = squeue_states()
        if states is None:
            raise SlurmUnavailable("squeue failed, so the study's running jobs cannot be found: is the Slurm "
                                   "controller up? (`sinfo`; `align-proxy slurm-local start` for a local one)")
        unnamed = {row["batch"] for row in rows if row["job_id"] is None}
        if unnamed:
            by_comment = squeue_comments() or {}
            for batch in unnamed:
                ids = sorted(by_comment.get(batch, []), key=lambda i: int(i.split("_")[1]) if "_" in i else 0)
                if ids:
                    self.store.record_job_ids(batch, ids)
            rows = [row for row in self.store.jobs(running_only=True) if row["config_hash"] in wanted]
        tracked, settled = {}, []
        for row in rows:
            if row["job_id"] is None:
                continue  # never submitted: the store's requeue puts it back to pending
            job = TrackedJob(row["config_hash"], row["job_id"], row["folder"], row["submitted_at"],
                             states.of(row["job_id"]))
            if job.state in ACTIVE:
                tracked[job.config_hash] = job
            else:
                settled.append((job.config_hash, self.settle(job)))
        return tracked, settled

    def poll(self, running: dict[str, TrackedJob], stop: threading.Event) -> list[TrackedJob]:
        """The jobs squeue no longer lists as queued or running; when none, a wait of `poll_s` first (the
        coordinator's own pace of asking squeue; a Ctrl-C ends the wait). A failed squeue ends no job."""
        states = squeue_states()
        ended = [] if states is None else [job for job in running.values() if states.of(job.job_id) not in ACTIVE]
        for job in ended:
            job.state = states.of(job.job_id)
        if not ended:
            stop.wait(self.poll_s)
        return ended

    def settle(self, job: TrackedJob) -> str:
        """Record how a cell's job ended: its result when it wrote metrics.json, else failed with the reason."""
        cell_dir = self.paths.cell(job.config_hash)
        if job.state:
            self.store.record_job_state(job.config_hash, job.state)
        failure = None if (cell_dir / METRICS_FILE).exists() else ended_reason(job, job.state, cell_dir)
        return settle_cell(self.store, cell_dir, time.time() - job.started, failure)

    def cancel(self, jobs: list[TrackedJob]) -> None:
        """scancel these jobs and fail their cells (a rerun with --retry-failed submits them again)."""
        ids = [job.job_id for job in jobs if job.job_id]
        if ids:
            subprocess.run(["scancel", *ids], check=False, timeout=60)
        for job in jobs:
            self.store.record_job_state(job.config_hash, "CANCELLED")
            self.store.record_failure(job.config_hash, f"Slurm job {job.job_id} cancelled when the study was "
                                                       "interrupted (Ctrl-C); rerun with --retry-failed")

    def note(self, running: dict[str, TrackedJob], started: list[Cell] | None = None) -> str:
        return f"{len(running)} jobs queued or running"


def slurm_job_states(jobs: list[dict]) -> dict[str, str]:
    """For `--status`: each listed job's Slurm state, live from squeue where it still knows the job, else the
    ended state the store recorded."""
    live = (squeue_states() if shutil.which("squeue") else None) or JobStates()
    return {job["config_hash"]: live.of(job["job_id"]) or job["state"] or
            ("unknown to squeue" if job["job_id"] else "being submitted") for job in jobs}
