"""Benchmarks stay runnable: each runs end to end on CPU at a tiny size and writes its JSON.

Their figures are measurements, never asserted here; only that every variant ran and was compared.
"""

import json
import os
import subprocess
import sys

from support import REPO


def run_benchmark(script: str, *args: str, tmp_path) -> dict:
    out = tmp_path / "bench.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args, "--out", str(out)],
                            capture_output=True, text=True, cwd=tmp_path, timeout=600, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return json.loads(out.read_text())


def test_grpo_rollout_benchmark_compares_the_recipe_with_plain_trl_on_cpu(tmp_path):
    report = run_benchmark("grpo_rollout.py", "--shape", "tiny", "--prompts", "2", "--generations", "2",
                           "--new-tokens", "4", "--gen-batch", "8", "--cycles", "1", tmp_path=tmp_path)
    measured = {r["what"] for r in report["results"] if "what" in r}
    assert {"hf-generate-default", "hf-generate-recipe", "trl-grpo-plain", "align-proxy-grpo"} <= measured
    assert all(r["mean_step_s"] > 0 for r in report["results"] if "mean_step_s" in r)


def test_eval_generation_benchmark_sets_the_evaluation_sampler_against_plain_generate(tmp_path, monkeypatch):
    # In this process (torch is already imported here): a subprocess would spend its time importing.
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_eval_generation", REPO / "benchmarks" / "eval_generation.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "eval_generation.json"
    monkeypatch.setattr(sys, "argv", ["eval_generation.py", "--shape", "tiny", "--prompts", "4", "--new-tokens", "4",
                                      "--per-prompt", "2", "--repeats", "1", "--out", str(out)])
    bench.main()
    report = json.loads(out.read_text())
    measured = {r["what"]: r for r in report["results"]}
    assert set(measured) == {"hf-generate-per-prompt", "hf-generate-batched", "align-proxy-eval"}  # no GPU: no compiled
    assert all(r["tokens_per_s"] > 0 and r["reply_tokens"] > 0 for r in measured.values())
    assert measured["align-proxy-eval"]["decoding"] == "eager decoding, dynamic cache (not on a GPU)"
    assert report["ratios"]["eval_over_batched"] > 0 and report["ratios"]["compiled_over_batched"] is None


def test_gpu_check_dry_run_lists_every_step_and_checks_its_prerequisites(tmp_path):
    command = ["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run", "--out", str(tmp_path / "out")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    listed = result.stdout.split("prerequisites")[0]
    for step in ("tests/test_gpu_paths.py", "throughput.py --shapes 62m", "throughput.py --shapes 350m",
                 "grpo_rollout.py --shape 62m", "eval_generation.py --shape 62m", "gpu_summary.py"):
        assert step in listed, step
    assert "FAIL" not in result.stdout and "all prerequisites hold" in result.stdout
    # a missing prerequisite fails the dry run, and says which
    result = subprocess.run(command, capture_output=True, text=True, timeout=60,
                            env={**env, "PYTHON": str(tmp_path / "no-python")})
    assert result.returncode == 1 and "FAIL python" in result.stdout


def test_gpu_requirements_are_the_ranges_pyproject_states():
    # Ranges, not pins: the GPU machine installs whatever pyproject allows that day, as the CPU suite does, and a
    # range here that pyproject does not state would let the two machines test different things.
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    stated = {canonicalize_name(r.name): r.specifier
              for r in map(Requirement, project["dependencies"] + project["optional-dependencies"]["test"])}
    lines = (REPO / "benchmarks" / "gpu_requirements.txt").read_text().splitlines()
    wanted = [Requirement(line.split("#")[0]) for line in lines if line.split("#")[0].strip()]
    assert wanted and all(r.specifier for r in wanted)
    for requirement in wanted:
        name = canonicalize_name(requirement.name)
        assert name in stated and requirement.specifier == stated[name], (requirement, stated.get(name))


def test_gpu_summary_reads_logs_of_steps_that_ran_out_of_time(tmp_path, monkeypatch):
    """A throughput step killed at its limit leaves no JSON report, only the lines it printed as variants finished,
    in its section of check.log (one log for every step: the GPU machine sends back at most 8 files)."""
    import importlib.util

    rows = [{"device": "NVIDIA H200", "torch": "2.13"},
            {"recipe": "sft", "shape": "62m", "variant": "trl-plain", "tokens_per_s": 12000, "mfu": 0.005,
             "rows_per_step": 16, "peak_gib": 20.0},
            {"recipe": "sft", "shape": "62m", "variant": "align-proxy", "tokens_per_s": 60000, "mfu": 0.025,
             "rows_per_step": 16, "micro_batch": 16, "x_raw": 0.14, "peak_gib": 9.5}]
    (tmp_path / "check.log").write_text("==> gpu_tests <==\n1 passed\n==> throughput-62m <==\n"
                                        + "\n".join(json.dumps(r) for r in rows) + "\nTraceback ...\n")
    (tmp_path / "steps.tsv").write_text("throughput-62m\t124\t130\n")
    spec = importlib.util.spec_from_file_location("gpu_summary", REPO / "benchmarks" / "gpu_summary.py")
    summary = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(summary)
    monkeypatch.setattr(sys, "argv", ["gpu_summary.py", str(tmp_path)])
    summary.main()
    text = (tmp_path / "summary.md").read_text()
    assert "NVIDIA H200" in text and "throughput-62m 124 (130 s)" in text
    assert "| 62m | sft | align-proxy | 16 (16) | 60,000 | 2.5% | 5.00 | 4.96 | 0.14 |" in text
    assert "GPU tests: no report" in text and "GRPO rollout: no figures" in text
    assert "Evaluation sampling: no figures" in text


def test_proxy_tuning_benchmark_compares_with_the_three_models_own_generation():
    # In this process (torch is already imported here): a subprocess would spend its time importing.
    import argparse
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_proxy_tuning", REPO / "benchmarks" / "proxy_tuning.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = argparse.Namespace(large="ladder-l", small="ladder-s", batch=4, new_tokens=2, repeats=1)
    cpu = bench.measure("cpu", args)
    assert set(cpu["seconds"]) == {"base", "expert", "anti_expert", "proxy_tuned"}
    assert cpu["ratio"] > 0 and cpu["sum_of_three"] == sum(cpu["seconds"][k] for k in ("base", "expert", "anti_expert"))


def test_the_gpu_wheelhouse_is_small_and_brings_what_the_image_lacks(tmp_path):
    """benchmarks/gpu_wheels.sh downloads (from PyPI, which CI reaches) the wheels the GPU machine's image lacks.
    Installed as the check installs them (--no-index --no-deps --target), for the GPU machine's Python 3.12, they
    import here ahead of this environment's own copies: TRL, datasets, and align_proxy.recipe on top of them."""
    wheels = tmp_path / "wheels"
    result = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_wheels.sh"), str(wheels)], capture_output=True,
                            text=True, timeout=300, env={**os.environ, "PYTHON": sys.executable})
    assert result.returncode == 0, result.stdout + result.stderr
    size = sum(p.stat().st_size for p in wheels.glob("*.whl"))
    assert 0 < size < 40 * 2**20 and "MiB in all" in result.stdout
    site = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
                              "--only-binary=:all:", "--python-version", "3.12", "--target", str(site),
                              *map(str, wheels.glob("*.whl"))], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr
    probe = ("import trl, datasets, align_proxy.recipe\n"
             "print(trl.__file__)\nprint(datasets.__file__)")
    imported = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PYTHONPATH": f"{site}:{REPO}"}, cwd=tmp_path)
    assert imported.returncode == 0, imported.stderr[-2000:]
    assert all(line.startswith(str(site)) for line in imported.stdout.split()), imported.stdout

