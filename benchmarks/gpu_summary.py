"""One table from what `benchmarks/gpu_check.sh` wrote: the GPU tests' outcome, training throughput of every
recipe and variant on both proxy shapes, and the GRPO rollout figures.

Throughput rows come from `throughput-<shape>.json`, or, when a step ran out of time before writing it, from the
JSON lines its log holds (each variant prints one as it finishes). Each row is set against plain TRL measured in
the same process (`x plain`), against the anchor's plain-TRL figure for SFT on an H100 (`x anchor`,
shared/bench/README.md) and against a raw training loop on the same shape (`x raw`: the hardware-bound
reference).

    python benchmarks/gpu_summary.py OUT_DIR        # writes OUT_DIR/summary.md and prints it
"""

from __future__ import annotations

import argparse
import json
import xml.etree.ElementTree as ElementTree
from pathlib import Path

# Plain TRL, SFT, batch 16 x 1024, H100 80GB (shared/bench/README.md, measured 2026-11-22).
ANCHOR_PLAIN_SFT = {"62m": 12_088, "350m": 14_169}


def json_lines(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text(errors="replace").splitlines() if path.exists() else []:
        if line.startswith("{"):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def throughput_rows(out: Path) -> list[dict]:
    rows = []
    for log in sorted(out.glob("throughput-*.log")):
        report = log.with_suffix(".json")
        if report.exists():
            rows += json.loads(report.read_text())["results"]
        else:
            rows += [r for r in json_lines(log) if "variant" in r]
    return rows


def tests_line(out: Path) -> str:
    report = out / "gpu_tests.xml"
    if not report.exists():
        return "GPU tests: no report (the step did not finish)"
    suite = ElementTree.parse(report).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    failed = [case.get("name") for case in suite.iter("testcase")
              if case.find("failure") is not None or case.find("error") is not None]
    return (f"GPU tests: {counts['tests']} run, {counts['failures'] + counts['errors']} failed, {counts['skipped']} "
            f"skipped" + (f" (failed: {', '.join(failed)})" if failed else ""))


def throughput_table(rows: list[dict]) -> list[str]:
    plain = {(r["shape"], r["recipe"]): r["tokens_per_s"] for r in rows
             if r.get("variant") == "trl-plain" and "tokens_per_s" in r}
    lines = ["| shape | recipe | variant | rows/step (micro) | tokens/s | MFU | x plain (same run) | x anchor plain | "
             "x raw loop | peak GiB | warm-up s |", "|---" * 11 + "|"]
    for r in rows:
        head = f"| {r.get('shape')} | {r.get('recipe')} | {r.get('variant')} |"
        if "tokens_per_s" not in r:
            lines.append(f"{head} | error: {str(r.get('error', '?'))[:90]} | | | | | | |")
            continue
        rate = r["tokens_per_s"]
        base = plain.get((r["shape"], r["recipe"]))
        anchor = ANCHOR_PLAIN_SFT.get(r["shape"]) if r["recipe"] == "sft" else None
        x_plain = f"{rate / base:.2f}" if base else ""
        x_anchor = f"{rate / anchor:.2f}" if anchor else ""
        peak = r.get("peak_gib") if r.get("peak_gib") is not None else "-"
        batch = f"{r.get('rows_per_step', '')} ({r.get('micro_batch', r.get('rows_per_step', ''))})"
        lines.append(f"{head} {batch} | {rate:,} | {r['mfu']:.1%} | {x_plain} | {x_anchor} | {r.get('x_raw', '')} | "
                     f"{peak} | {r.get('warmup_s', '')} |")
    return lines


def rollout_table(out: Path) -> list[str]:
    report = out / "grpo_rollout.json"
    rows = json.loads(report.read_text())["results"] if report.exists() else json_lines(out / "grpo_rollout.log")
    rows = [r for r in rows if "what" in r]
    if not rows:
        return ["GRPO rollout: no figures (the step did not finish)"]
    lines = ["| what | new tokens/s | step s | completion tokens/s | peak GiB | note |", "|---" * 6 + "|"]
    for r in rows:
        lines.append(f"| {r['what']} | {r.get('new_tokens_per_s', '')} | {r.get('mean_step_s', '')} | "
                     f"{r.get('completion_tokens_per_s', '')} | {r.get('peak_gib', '')} | "
                     f"{str(r.get('error', r.get('backend', '')))[:90]} |")
    return lines


def steps_line(out: Path) -> str:
    status = out / "steps.tsv"  # gpu_check.sh: name, exit code, seconds
    if not status.exists():
        return ""
    parts = [line.split("\t") for line in status.read_text().splitlines() if line.strip()]
    return "Steps (exit code, seconds; 124 = ran out of its time): " + ", ".join(
        f"{name} {code} ({seconds} s)" for name, code, seconds in parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default=".", help="the directory gpu_check.sh wrote")
    out = Path(parser.parse_args().out)
    device = next((r["device"] for log in sorted(out.glob("throughput-*.log")) for r in json_lines(log)
                   if "device" in r), "unknown device")
    text = "\n".join([f"# GPU check on {device}", "", steps_line(out), "", tests_line(out), "",
                      "## Training throughput", "", *throughput_table(throughput_rows(out)), "",
                      "## GRPO rollouts (62M)", "", *rollout_table(out), ""])
    (out / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
