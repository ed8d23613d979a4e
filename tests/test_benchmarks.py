"""Benchmarks stay runnable: each runs end to end on CPU at a tiny size and writes its JSON.

Their figures are measurements, never asserted here; only that every variant ran and was compared.
"""

import json
import os
import subprocess
import sys

from conftest import REPO


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
    assert {"trl-grpo-plain", "align-proxy-grpo"} <= measured
    assert all(r["mean_step_s"] > 0 for r in report["results"] if "mean_step_s" in r)



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
