"""One table from what `benchmarks/gpu_check.sh` wrote: the GPU tests' outcome, training throughput of every
recipe and variant on both proxy shapes, the GRPO rollout figures and the evaluation sampler's.

Throughput rows come from `throughput-<shape>.json`, or, when a step ran out of time before writing it, from the
JSON lines its section of `check.log` holds (each variant prints one as it finishes). Each row is set against plain
TRL measured in the same process (`x plain`), against the anchor's plain-TRL figure for SFT on an H100 (`x anchor`,
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


def json_lines(lines: list[str]) -> list[dict]:
    rows = []
    for line in lines:
        if line.startswith("{"):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def log_sections(out: Path) -> dict[str, list[str]]:
    """Each step's lines in check.log, which gpu_check.sh opens with `==> NAME <==` (one log, not one per step:
    the GPU machine sends back at most 8 files)."""
    sections, name = {}, None
    log = out / "check.log"
    for line in log.read_text(errors="replace").splitlines() if log.exists() else []:
        if line.startswith("==> ") and line.endswith(" <=="):
            name = line[4:-4]
            sections[name] = []
        elif name is not None:
            sections[name].append(line)
    return sections


def step_results(out: Path, name: str, sections: dict[str, list[str]]) -> list[dict]:
    """A step's results: its JSON report's, else the JSON lines its log section printed before it stopped."""
    report = out / f"{name}.json"
    return json.loads(report.read_text())["results"] if report.exists() else json_lines(sections.get(name, []))


def throughput_rows(out: Path, sections: dict[str, list[str]]) -> list[list[dict]]:
    """The throughput rows of each throughput step, one list per step (each set against its own plain TRL)."""
    names = sorted({p.stem for p in out.glob("throughput-*.json")}
                   | {n for n in sections if n.startswith("throughput")})
    return [[r for r in step_results(out, name, sections) if "variant" in r] for name in names]


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


def throughput_table(steps: list[list[dict]]) -> list[str]:
    lines = ["| shape | recipe | variant | rows/step (micro) | tokens/s | MFU | x plain (same run) | x anchor plain | "
             "x raw loop | peak GiB | warm-up s |", "|---" * 11 + "|"]
    for rows in steps:
        lines += _throughput_lines(rows)
    return lines


def _throughput_lines(rows: list[dict]) -> list[str]:
    plain = {(r["shape"], r["recipe"]): r["tokens_per_s"] for r in rows
             if r.get("variant") == "trl-plain" and "tokens_per_s" in r}
    lines = []
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


def rollout_table(out: Path, sections: dict[str, list[str]]) -> list[str]:
    rows = [r for r in step_results(out, "grpo_rollout", sections) if "what" in r]
    if not rows:
        return ["GRPO rollout: no figures (the step did not finish)"]
    lines = ["| what | new tokens/s | step s | completion tokens/s | peak GiB | note |", "|---" * 6 + "|"]
    for r in rows:
        lines.append(f"| {r['what']} | {r.get('new_tokens_per_s', '')} | {r.get('mean_step_s', '')} | "
                     f"{r.get('completion_tokens_per_s', '')} | {r.get('peak_gib', '')} | "
                     f"{str(r.get('error', r.get('backend', '')))[:90]} |")
    return lines


def evaluation_table(out: Path, sections: dict[str, list[str]]) -> list[str]:
    rows = [r for r in step_results(out, "eval_generation", sections) if "what" in r]
    if not rows:
        return ["Evaluation sampling: no figures (the step did not finish)"]
    plain = next((r["tokens_per_s"] for r in rows if r["what"] == "hf-generate-batched" and "tokens_per_s" in r), None)
    lines = ["| what | reply tokens/s | x batched generate | warm-up s | note |", "|---" * 5 + "|"]
    for r in rows:
        rate = r.get("tokens_per_s")
        ratio = f"{rate / plain:.2f}" if rate and plain else ""
        lines.append(f"| {r['what']} | {rate or ''} | {ratio} | {r.get('warmup_s', '')} | "
                     f"{str(r.get('error', r.get('decoding', '')))[:90]} |")
    return lines


def shape_of(out: Path, name: str) -> str:
    report = out / f"{name}.json"
    return json.loads(report.read_text()).get("shape", "62m") if report.exists() else "62m"


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
    sections = log_sections(out)
    reports = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    device = next((r["device"] for r in reports + json_lines(sum(sections.values(), [])) if "device" in r),
                  "unknown device")
    text = "\n".join([f"# GPU check on {device}", "", steps_line(out), "", tests_line(out), "",
                      "## Training throughput", "", *throughput_table(throughput_rows(out, sections)), "",
                      f"## GRPO rollouts ({shape_of(out, 'grpo_rollout')})", "", *rollout_table(out, sections), "",
                      f"## Evaluation sampling ({shape_of(out, 'eval_generation')})", "",
                      *evaluation_table(out, sections), ""])
    (out / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
