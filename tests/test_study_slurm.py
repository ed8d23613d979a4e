"""Study cells as Slurm jobs (`--executor slurm`), against a real Slurm: a study runs to the same per-cell metrics
as on this machine, a coordinator killed with SIGKILL reattaches and submits nothing twice, a scancel'd job fails
its cell with the reason and --retry-failed runs it again. The cluster is the project's single-node one
(`align-proxy slurm-local start`, which CI runs first); those tests skip without it. The cells are fake
(tests/fake_recipe.py): what is tested is the scheduling, not the training. Without Slurm, `--executor slurm`
fails before touching anything; resources, sbatch parameters and the multi-node rendezvous are checked offline."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import yaml

from support import FAKE_STUDY, REPO, rows, write_spec

FAST_JOB = {"gpus_per_cell": 0, "cpus": 1, "mem": "500M", "time": "10"}  # a 2-core CI node runs two at a time


def slurm_spec(tmp_path: Path, name: str, seconds: float = 0.0, slurm: dict | None = None,
               learning_rates=(1e-3, 3e-4)) -> Path:
    """A fake study of 2 models x the learning rates (4 cells by default) whose jobs each take one core."""
    spec = write_spec(tmp_path, name, {"learning_rate": list(learning_rates)}, [0], seconds=seconds)
    raw = yaml.safe_load(spec.read_text())
    raw["recipes"][0]["slurm"] = slurm if slurm is not None else FAST_JOB
    spec.write_text(yaml.safe_dump(raw))
    return spec


def slurm_running() -> str | None:
    """Why Slurm tests cannot run here, or None when a cluster takes jobs."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "Slurm is not installed (apt-get install -y slurm-wlm munge; CI does)"
    states = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=30)
    if states.returncode != 0 or not {"idle", "mix", "alloc"} & set(states.stdout.split()):
        return "no Slurm node takes jobs: start one with `align-proxy slurm-local start` (CI does)"
    return None


needs_slurm = pytest.mark.skipif(slurm_running() is not None, reason=str(slurm_running()))


def coordinator(*args: str) -> list[str]:
    return [*FAKE_STUDY, "study", *args, "--executor", "slurm", "--poll-seconds", "0.3", "--no-report"]


def slurm_jobs_named(name: str) -> list[str]:
    """Every job (array tasks one by one) Slurm has under this name, ended ones included: what was submitted."""
    out = subprocess.run(["squeue", "--me", "-r", "-h", "-t", "all", "-n", name, "-o", "%i"], capture_output=True,
                         text=True, timeout=60, check=True)
    return out.stdout.split()


def wait_for(condition, what: str, timeout: float = 180.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)  # polling another process's store and Slurm's queue
    pytest.fail(f"timed out waiting for {what}")


def job_rows(db: Path) -> list[tuple]:
    if not db.exists():
        return []
    try:
        return rows(db, "SELECT config_hash, job_id FROM jobs", timeout=0.5)
    except sqlite3.OperationalError:  # the table is made with the store, a moment after the file
        return []


# --- offline: what the spec, submitit and accelerate get ----------------------------------------------------------


def test_slurm_resources_do_not_change_a_cells_name(tmp_path):
    from align_proxy.studies.spec import load_spec

    plain = load_spec(write_spec(tmp_path, "plain", {"learning_rate": [1e-3]}, [0], recipe="sft"))
    raw = yaml.safe_load((tmp_path / "plain.yaml").read_text())
    raw["recipes"][0]["slurm"] = {"gpus_per_cell": 2, "partition": "gpu", "time": "1-00:00:00"}
    (tmp_path / "slurm.yaml").write_text(yaml.safe_dump(raw))
    with_slurm = load_spec(tmp_path / "slurm.yaml")
    assert [c.config_hash for c in with_slurm.cells()] == [c.config_hash for c in plain.cells()]
    assert with_slurm.recipes[0].slurm.minutes == 1440 and with_slurm.recipes[0].slurm.partition == "gpu"


@pytest.mark.parametrize("slurm, words", [({"gpu_per_cell": 1}, "did you mean 'gpus_per_cell'"),
                                          ({"time": "soon"}, "recipes[0].slurm.time 'soon' is not a Slurm time"),
                                          ({"cpus": 0}, "recipes[0].slurm.cpus must be a whole number")])
def test_a_bad_slurm_key_is_refused_naming_it(tmp_path, slurm, words):
    from align_proxy.studies.spec import StudySpecError, load_spec

    raw = yaml.safe_load(write_spec(tmp_path, "bad", {}, [0], recipe="sft").read_text())
    raw["recipes"][0]["slurm"] = slurm
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(StudySpecError, match=r"bad\.yaml") as error:
        load_spec(tmp_path / "bad.yaml")
    assert words in str(error.value)


def sbatch_script(tmp_path: Path, monkeypatch, parameters: dict) -> str:
    """The script submitit's public executor hands sbatch for a job of these parameters (a fake sbatch on PATH
    takes it, so no Slurm is needed)."""
    import submitit

    fake = tmp_path / "bin" / "sbatch"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'Submitted batch job 4242'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    executor = submitit.SlurmExecutor(folder=tmp_path / "slurm" / "%j", max_num_timeout=0)
    executor.update_parameters(**parameters)
    job = executor.submit(print, "a cell")
    assert job.job_id == "4242"
    return job.paths.submission_file.read_text()


def test_a_cells_resources_become_its_sbatch_lines(tmp_path, monkeypatch):
    from align_proxy.studies.execute.slurm import job_parameters
    from align_proxy.studies.spec import Cell, SlurmResources

    launched = Cell("m", "dpo", "default", 0, {}, "h", {"config_file": "x.yaml", "num_processes": 8, "num_machines": 2})
    resources = SlurmResources(time="2:00:00", partition="gpu", account="proj", sbatch={"exclude": "node7"})
    sbatch = sbatch_script(tmp_path, monkeypatch, job_parameters(resources, launched, "s:dpo", "b1"))
    for line in ("--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=4", "--cpus-per-task=8", "--mem=64G",
                 "--time=120", "--partition=gpu", "--account=proj", "--exclude=node7", "--comment=b1", "--job-name=s:dpo"):
        assert f"#SBATCH {line}" in sbatch
    plain = Cell("m", "sft", "default", 0, {}, "h")
    cpu_only = job_parameters(SlurmResources(gpus_per_cell=0, mem=None), plain, "s:sft", "b2")
    assert "gpus_per_node" not in cpu_only and "mem" not in cpu_only["additional_parameters"]


def test_a_multinode_launch_takes_its_rendezvous_from_slurms_environment(monkeypatch):
    from submitit.slurm.slurm import SlurmJobEnvironment

    from align_proxy.studies.execute.slurm import job_launch_flags

    launch = {"config_file": "zero2.yaml", "num_processes": 16, "num_machines": 2}
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu[03-04]")
    flags = {}
    for node in (0, 1):
        monkeypatch.setenv("SLURM_NODEID", str(node))
        environment = SlurmJobEnvironment()
        flags[node] = job_launch_flags(launch, environment.hostnames, environment.node, "4242")
    for node, argv in flags.items():
        got = dict(zip(argv[::2], argv[1::2]))
        assert got["--machine_rank"] == str(node) and got["--main_process_ip"] == "gpu03"
        assert got["--num_machines"] == "2" and got["--num_processes"] == "16"
    assert flags[0][flags[0].index("--main_process_port") + 1] == flags[1][flags[1].index("--main_process_port") + 1]
    assert "--num_machines" not in job_launch_flags({"config_file": "c.yaml", "num_processes": 2}, ["a"], 0, "7")


def test_slurms_words_in_a_jobs_log_name_why_it_ended(tmp_path):
    from align_proxy.studies.execute.slurm import TrackedJob, ended_reason

    job = TrackedJob("h", "77", str(tmp_path / "%j"), 0.0)
    (tmp_path / "77").mkdir()
    (tmp_path / "77" / "77_0_log.err").write_text(
        "slurmstepd: error: *** JOB 77 ON vm CANCELLED AT 2026-11-29T10:00:00 DUE TO TIME LIMIT ***\n")
    assert "hit its time limit" in ended_reason(job, None, tmp_path)  # squeue has forgotten the job
    (tmp_path / "77" / "77_0_log.err").write_text("")
    (tmp_path / "job.json").write_text(json.dumps({"job_id": "77", "exit_code": 3}))
    assert ended_reason(job, "FAILED", tmp_path) == "exit code 3"


def test_a_study_directory_the_other_nodes_cannot_see_is_warned_about(tmp_path, monkeypatch):
    from align_proxy.studies.execute import slurm

    for nodes, fstype, warned in ((["n1", "n2"], "tmpfs", True), (["n1", "n2"], "nfs4", False),
                                  (["n1"], "tmpfs", False)):
        monkeypatch.setattr(slurm.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 0, "\n".join(nodes)))
        monkeypatch.setattr(slurm, "_filesystem_type", lambda path: fstype)
        warning = slurm.shared_filesystem_warning(tmp_path)
        assert (warning is not None) == warned and (not warned or f"on a {fstype} filesystem" in warning)


def test_without_slurm_the_slurm_executor_fails_at_once_and_touches_nothing(fake_kind, tmp_path, monkeypatch, capsys):
    from align_proxy.cli import main

    spec = slurm_spec(tmp_path, "noslurm")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no sbatch, squeue, scancel or srun
    started = time.monotonic()
    assert main(["study", str(spec), "--executor", "slurm"]) == 2
    out = capsys.readouterr().out
    assert "sbatch, squeue, scancel, srun not found on PATH" in out and "--executor local" in out, out
    assert not (tmp_path / "noslurm").exists()  # no study directory, no store, no jobs
    assert time.monotonic() - started < 10


def test_cells_on_several_machines_need_the_slurm_executor(fake_kind, tmp_path):
    from align_proxy.studies import runner
    from align_proxy.studies.spec import load_spec

    accelerate = tmp_path / "two_nodes.yaml"
    accelerate.write_text(yaml.safe_dump({"num_processes": 4, "num_machines": 2}))
    raw = yaml.safe_load(write_spec(tmp_path, "wide", {}, [0]).read_text())
    raw["recipes"][0]["launch"] = {"config_file": str(accelerate)}
    (tmp_path / "wide.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(runner.StudyRunError, match="--executor slurm"):
        runner.run_study(load_spec(tmp_path / "wide.yaml"), progress=False, report=False)
    assert not (tmp_path / "wide").exists()


# --- against a real Slurm -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def killed_and_reattached(tmp_path_factory):
    """A 4-cell study as Slurm jobs whose coordinator is SIGKILLed once every cell is submitted and a job runs,
    then started again to the end; and the same spec run on this machine, for its metrics."""
    if slurm_running():
        pytest.skip(slurm_running())
    tmp_path = tmp_path_factory.mktemp("slurm")
    name = f"reattach-{uuid.uuid4().hex[:8]}"  # its jobs' Slurm name: apart from every other test's
    spec = slurm_spec(tmp_path, name, seconds=1.0)
    db = tmp_path / name / "results.sqlite"
    started = time.monotonic()
    first = subprocess.Popen(coordinator(str(spec)), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: len([r for r in job_rows(db) if r[1]]) == 4, "four recorded job ids")
        states = subprocess.run(["squeue", "--me", "-r", "-h", "-n", f"{name}:fake", "-o", "%T"], capture_output=True,
                                text=True, check=True).stdout.split()
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    finally:
        first.kill()
    after_kill = dict(rows(db, "SELECT status, COUNT(*) FROM cells GROUP BY status"))
    second = subprocess.run(coordinator(str(spec)), capture_output=True, text=True, cwd=REPO, timeout=600)
    slurm_seconds = time.monotonic() - started
    local_started = time.monotonic()
    from align_proxy.cli import main

    with pytest.MonkeyPatch.context() as patch:  # the same spec on this machine, in this process
        from dataclasses import replace

        from align_proxy import kinds
        from align_proxy.studies.runner import run_study
        from align_proxy.studies.spec import load_spec
        from fake_recipe import FAKE

        patch.setitem(kinds.KINDS, FAKE.name, FAKE)
        patch.syspath_prepend(str(REPO))
        local = run_study(replace(load_spec(spec), output_dir=str(tmp_path / "local")), jobs=2, progress=False,
                          report=False)
        local_seconds = time.monotonic() - local_started
        status = io.StringIO()
        with contextlib.redirect_stdout(status):  # the CLI's console writes to whatever sys.stdout is
            status_code = main(["study", str(spec), "--status"])
    print(f"4 fake cells (1 s each): Slurm {slurm_seconds:.1f} s with one kill and reattach, local {local_seconds:.1f} s")
    return {"db": db, "name": name, "second": second, "local": local, "after_kill": after_kill,
            "states_at_kill": states, "status": (status_code, status.getvalue()),
            "local_db": tmp_path / "local" / "results.sqlite"}


@needs_slurm
def test_a_killed_coordinator_leaves_its_jobs_running(killed_and_reattached):
    assert killed_and_reattached["after_kill"].get("running", 0) > 0
    assert {"PENDING", "RUNNING"} & set(killed_and_reattached["states_at_kill"])


@needs_slurm
def test_a_rerun_reattaches_submits_nothing_twice_and_finishes(killed_and_reattached):
    second, db = killed_and_reattached["second"], killed_and_reattached["db"]
    assert second.returncode == 0, second.stdout + second.stderr
    assert "4/4 cells done" in second.stdout
    assert [row[0] for row in rows(db, "SELECT attempts FROM cells")] == [1, 1, 1, 1]
    assert rows(db, "SELECT COUNT(*) FROM jobs")[0][0] == 4
    assert len(slurm_jobs_named(f"{killed_and_reattached['name']}:fake")) == 4  # what Slurm itself was given


@needs_slurm
def test_a_slurm_study_gives_the_same_metrics_as_a_local_one(killed_and_reattached):
    assert killed_and_reattached["local"].done == 4
    slurm = dict(rows(killed_and_reattached["db"], "SELECT config_hash, metrics FROM results"))
    local = dict(rows(killed_and_reattached["local_db"], "SELECT config_hash, metrics FROM results"))
    assert len(slurm) == 4 and slurm == local


@needs_slurm
def test_status_shows_each_cells_job_and_its_slurm_state(killed_and_reattached):
    code, status = killed_and_reattached["status"]
    assert code == 0
    job_ids = [row[0] for row in rows(killed_and_reattached["db"], "SELECT job_id FROM jobs")]
    for job_id in job_ids:
        assert f"│ {job_id} " in status and "COMPLETED" in status, status


@needs_slurm
def test_a_scancelled_job_fails_its_cell_with_the_reason_and_retry_failed_reruns_it(tmp_path):
    name = f"scancel-{uuid.uuid4().hex[:8]}"
    spec = slurm_spec(tmp_path, name, learning_rates=[1e-3])  # 2 cells
    db = tmp_path / name / "results.sqlite"
    # Held jobs stay pending until scancel'd; resources are not part of a cell, so the retry runs the same cells.
    held = subprocess.Popen(coordinator(str(spec), "--slurm", "sbatch={hold: true}"), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        ids = wait_for(lambda: [r[1] for r in job_rows(db) if r[1]] if len(job_rows(db)) == 2 else None, "job ids")
        # The submission's array as one: scancel of its tasks one by one leaves a moment in which squeue lists
        # neither the cancelled task nor the array (a pending array's cancelled task is listed only once the whole
        # array has ended), and a poll then sees a job that vanished rather than one cancelled.
        subprocess.run(["scancel", *sorted({job_id.split("_")[0] for job_id in ids})], check=True, timeout=60)
        out, _ = held.communicate(timeout=120)
    finally:
        held.kill()
    assert held.returncode == 1 and "0/2 cells done" in out and "2 failed" in out, out
    for job_id, status, error in rows(db, "SELECT j.job_id, c.status, c.error FROM cells c JOIN jobs j USING (config_hash)"):
        assert status == "failed" and f"Slurm job {job_id} was cancelled" in error and "(CANCELLED)" in error
    retried = subprocess.run(coordinator(str(spec), "--retry-failed"), capture_output=True, text=True, cwd=REPO,
                             timeout=600)
    assert retried.returncode == 0 and "2/2 cells done" in retried.stdout, retried.stdout + retried.stderr
    assert {row[0] for row in rows(db, "SELECT attempts FROM cells")} == {2}
    assert rows(db, "SELECT COUNT(*) FROM jobs")[0][0] == 4  # one job per attempt


@needs_slurm
def test_ctrl_c_with_cancel_on_interrupt_cancels_the_studys_jobs_and_fails_their_cells(tmp_path):
    name = f"interrupt-{uuid.uuid4().hex[:8]}"
    spec = slurm_spec(tmp_path, name, learning_rates=[1e-3])  # 2 cells
    db = tmp_path / name / "results.sqlite"
    held = subprocess.Popen(coordinator(str(spec), "--slurm", "sbatch={hold: true}", "--cancel-on-interrupt"),
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        ids = wait_for(lambda: [r[1] for r in job_rows(db) if r[1]] if len(job_rows(db)) == 2 else None, "job ids")
        held.send_signal(signal.SIGINT)
        out, _ = held.communicate(timeout=120)
    finally:
        held.kill()
    assert held.returncode == 130 and "2 Slurm job(s) cancelled" in out, out
    states = subprocess.run(["squeue", "--me", "-r", "-h", "-t", "all", "-n", f"{name}:fake", "-o", "%T"],
                            capture_output=True, text=True, check=True).stdout.split()
    assert states and set(states) == {"CANCELLED"} and len(ids) == 2
    errors = [row[0] for row in rows(db, "SELECT error FROM cells WHERE status = 'failed'")]
    assert len(errors) == 2 and all("cancelled when the study was interrupted" in e for e in errors)


@needs_slurm
def test_jobs_a_coordinator_submitted_but_never_recorded_are_found_by_their_submission_name(fake_kind, tmp_path,
                                                                                              monkeypatch):
    """Killed between sbatch and recording the ids: the rerun finds the jobs by the name written before sbatch."""
    from align_proxy.studies.runner import study_paths
    from align_proxy.studies.execute.slurm import SlurmExecutor
    from align_proxy.studies.spec import load_spec
    from align_proxy.studies.store import ResultStore

    spec = load_spec(slurm_spec(tmp_path, f"unrecorded-{uuid.uuid4().hex[:8]}", slurm={**FAST_JOB, "sbatch": {"hold": True}}))
    paths = study_paths(Path(spec.output_dir))
    store = ResultStore(paths.db)
    cells = spec.cells()
    store.add_cells(cells)
    slurm = SlurmExecutor(store, paths, {"fake": Path(fake_kind.script)}, {"fake": spec.recipes[0].config},
                       {"fake": spec.recipes[0].slurm}, spec.name)

    def killed(*args):
        raise KeyboardInterrupt  # the coordinator dies here: sbatch has answered, the ids are not stored

    monkeypatch.setattr(store, "record_job_ids", killed)
    with pytest.raises(KeyboardInterrupt):
        slurm.submit(cells[:2])
    monkeypatch.undo()
    assert [row[0] for row in rows(paths.db, "SELECT job_id FROM jobs")] == [None, None]
    tracked, settled = SlurmExecutor(ResultStore(paths.db), paths, {}, {}, {}, spec.name).reattach(
        {c.config_hash for c in cells})
    try:
        submitted = slurm_jobs_named(f"{spec.name}:fake")
        assert settled == [] and sorted(job.job_id for job in tracked.values()) == sorted(submitted)
        assert len(submitted) == 2 and {job.config_hash for job in tracked.values()} == {c.config_hash for c in cells[:2]}
        assert sorted(row[0] for row in rows(paths.db, "SELECT job_id FROM jobs")) == sorted(submitted)
    finally:
        subprocess.run(["scancel", "-n", f"{spec.name}:fake"], timeout=60)
