#!/usr/bin/env bash
# The GPU check: on one CUDA GPU, the GPU tests of the fast paths, the training-throughput benchmark on both proxy
# shapes, the GRPO rollout and evaluation-sampling benchmarks, then one summary table (OUT/summary.md). Each step has
# its own time limit, so the whole check ends within 8 minutes on an H100/H200, compilation included; a step that runs
# out of time still leaves its section of check.log, and the summary takes what it holds. OUT holds 8 files: check.log,
# steps.tsv, gpu_tests.xml, four JSON reports and summary.md (the GPU machine sends back at most 8).
#
#   benchmarks/gpu_check.sh [--out DIR]     # DIR defaults to $OUT (the device tool's) or ./gpu_check
#   benchmarks/gpu_check.sh --dry-run       # on any machine: list exactly what would run, check prerequisites
#   benchmarks/gpu_check.sh --wheels DIR    # first install DIR's wheels (benchmarks/gpu_wheels.sh) into a
#                                           # temporary directory put on PYTHONPATH, offline
#   benchmarks/gpu_check.sh --rehearse      # on a CPU: every step end to end at tiny shapes (the GPU tests skip
#                                           # themselves), summary included, through the same code paths, ~1 min
#
# What the check needs beside a CUDA torch: benchmarks/gpu_requirements.txt; the GPU machine's image lacks TRL and
# datasets, which benchmarks/gpu_wheels.sh downloads (here) for it.
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
OUT_DIR="${OUT:-$REPO/gpu_check}"
DRY_RUN=0
REHEARSE=0
WHEELS=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --rehearse) REHEARSE=1 ;;
    --wheels) WHEELS="$2"; shift ;;
    --wheels=*) WHEELS="${1#--wheels=}" ;;
    --out) OUT_DIR="$2"; shift ;;
    --out=*) OUT_DIR="${1#--out=}" ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$1' (use --dry-run, --rehearse, --out DIR, --wheels DIR)" >&2; exit 2 ;;
  esac
  shift
done

# name | seconds | command. The limits add up to 450 s, leaving room for start-up and the summary in 8 minutes.
GPU_TESTS="tests/test_gpu_paths.py tests/test_speed.py::test_varlen_kernel_matches_the_per_example_reference_on_a_gpu"
STEPS=(
  "gpu_tests|135|$PYTHON -m pytest -q -rs -p no:cacheprovider $GPU_TESTS --junitxml=$OUT_DIR/gpu_tests.xml"
  "throughput-62m|110|$PYTHON benchmarks/throughput.py --shapes 62m --recipes sft,dpo,reward --steps 8 --warmup 3 --rows 600 --out $OUT_DIR/throughput-62m.json"
  "throughput-350m|90|$PYTHON benchmarks/throughput.py --shapes 350m --recipes sft,dpo --variants trl-plain,align-proxy --steps 6 --warmup 2 --rows 400 --raw-rows 16 --out $OUT_DIR/throughput-350m.json"
  "grpo_rollout|55|$PYTHON benchmarks/grpo_rollout.py --shape 62m --new-tokens 128 --cycles 1 --out $OUT_DIR/grpo_rollout.json"
  "eval_generation|60|$PYTHON benchmarks/eval_generation.py --shape 62m --prompts 64 --new-tokens 64 --per-prompt 2 --repeats 1 --out $OUT_DIR/eval_generation.json"
)
if [ "$REHEARSE" = 1 ]; then  # the same steps and files at tiny shapes, for a CPU
  TINY="--shapes tiny --steps 2 --warmup 1 --rows 60 --batch 4 --max-len 32 --raw-rows 4"
  STEPS=(
    "gpu_tests|120|$PYTHON -m pytest -q -rs -p no:cacheprovider $GPU_TESTS --junitxml=$OUT_DIR/gpu_tests.xml"
    "throughput-62m|150|$PYTHON benchmarks/throughput.py $TINY --recipes sft,dpo,reward --out $OUT_DIR/throughput-62m.json"
    "throughput-350m|120|$PYTHON benchmarks/throughput.py $TINY --recipes sft,dpo --variants trl-plain,align-proxy --out $OUT_DIR/throughput-350m.json"
    "grpo_rollout|120|$PYTHON benchmarks/grpo_rollout.py --shape tiny --prompts 2 --generations 2 --new-tokens 4 --gen-batch 8 --cycles 1 --out $OUT_DIR/grpo_rollout.json"
    "eval_generation|60|$PYTHON benchmarks/eval_generation.py --shape tiny --prompts 8 --new-tokens 8 --per-prompt 2 --repeats 1 --out $OUT_DIR/eval_generation.json"
  )
fi
SUMMARY="$PYTHON benchmarks/gpu_summary.py $OUT_DIR"
SCRIPTS=(benchmarks/throughput.py benchmarks/grpo_rollout.py benchmarks/eval_generation.py benchmarks/gpu_summary.py)
FILES=(tests/test_gpu_paths.py tests/test_speed.py benchmarks/gpu_requirements.txt "${SCRIPTS[@]}")

cd "$REPO" || exit 1
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
if [ -n "$WHEELS" ]; then
  # The GPU machine has no network: its missing packages travel as wheels, installed without an index or deps
  # (their needs are in its image) into a directory of their own, never into the image's environment.
  ls "$WHEELS"/*.whl >/dev/null 2>&1 || { echo "gpu_check: --wheels $WHEELS holds no .whl files (benchmarks/gpu_wheels.sh $WHEELS makes them)" >&2; exit 2; }
  SITE=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check_site.XXXXXX")
  trap 'rm -rf "$SITE"' EXIT
  if ! "$PYTHON" -m pip install --quiet --no-index --no-deps --no-compile --target "$SITE" "$WHEELS"/*.whl; then
    echo "gpu_check: installing the wheels in $WHEELS failed (above)" >&2; exit 1
  fi
  export PYTHONPATH="$REPO:$SITE${PYTHONPATH#$REPO}"
  echo "gpu_check: installed $(ls "$WHEELS"/*.whl | wc -l) wheels from $WHEELS into $SITE"
fi

check_prerequisites() {
  local failed=0
  note() { printf '  %-4s %s\n' "$1" "$2"; [ "$1" = ok ] || [ "$1" = info ] || failed=1; }
  if command -v "$PYTHON" >/dev/null; then note ok "python: $("$PYTHON" --version 2>&1)"; else note FAIL "python: '$PYTHON' not found (set PYTHON=...)"; return 1; fi
  if torch_line=$("$PYTHON" -c 'import torch; print(torch.__version__, "cuda" if torch.cuda.is_available() else "no CUDA")' 2>&1); then
    note ok "torch $torch_line"
    case "$torch_line" in *"no CUDA"*)
      if [ "$DRY_RUN" = 1 ]; then note info "no GPU here: a real run needs one"
      elif [ "$REHEARSE" = 1 ]; then note info "no GPU here: a rehearsal, at tiny shapes"
      else note FAIL "no CUDA GPU visible (--rehearse runs the steps on a CPU)"; fi ;;
    esac
  else note FAIL "torch does not import: ${torch_line##*$'\n'}"; fi
  for file in "${FILES[@]}"; do [ -f "$file" ] && note ok "$file" || note FAIL "$file missing"; done
  local -A helped=()  # each script's --help at once: every one imports torch
  for script in "${SCRIPTS[@]}"; do "$PYTHON" "$script" --help >/dev/null 2>&1 & helped[$script]=$!; done
  for script in "${SCRIPTS[@]}"; do
    if wait "${helped[$script]}"; then note ok "$script --help"; else note FAIL "$script --help fails: run it to see why"; fi
  done
  if missing=$("$PYTHON" - benchmarks/gpu_requirements.txt <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version
try:
    from packaging.requirements import Requirement
except ImportError:
    print("packaging does not import (pip install packaging), so no version range can be read")
    sys.exit(1)
wrong = []
for line in open(sys.argv[1]):
    line = line.split("#")[0].strip()
    if line:
        wanted = Requirement(line)
        try:
            have = version(wanted.name)
        except PackageNotFoundError:
            have = None
        # An installed dev or rc build inside the range is in it (a SpecifierSet leaves pre-releases out by default).
        if have is None or not wanted.specifier.contains(have, prereleases=True):
            wrong.append(f"{wanted.name} {have or 'missing'} (wants {wanted.specifier})")
print("; ".join(wrong))
sys.exit(1 if wrong else 0)
EOF
  ); then note ok "benchmarks/gpu_requirements.txt: every wheel in its range"
  else note FAIL "benchmarks/gpu_requirements.txt: $missing"; fi
  if mkdir -p "$OUT_DIR" 2>/dev/null && probe=$(mktemp "$OUT_DIR/.probe.XXXXXX" 2>/dev/null); then
    rm -f "$probe"; note ok "output directory $OUT_DIR is writable"
  else note FAIL "output directory $OUT_DIR is not writable (--out DIR)"; fi
  return $failed
}

echo "gpu_check: would run, in $REPO, each step under its time limit:"
for step in "${STEPS[@]}"; do
  IFS='|' read -r name limit command <<<"$step"
  echo "  [$name, ${limit} s] $command >> $OUT_DIR/check.log"
done
echo "  [summary] $SUMMARY > $OUT_DIR/summary.md"
echo "gpu_check: prerequisites"
check_prerequisites
ready=$?
if [ "$DRY_RUN" = 1 ]; then
  [ $ready = 0 ] && echo "gpu_check: dry run: all prerequisites hold" || echo "gpu_check: dry run: prerequisites missing (above)"
  exit $ready
fi
[ $ready = 0 ] || { echo "gpu_check: prerequisites missing (above); nothing run" >&2; exit 1; }

: >"$OUT_DIR/steps.tsv"
: >"$OUT_DIR/check.log"  # every step's output, one section each: the GPU machine sends back at most 8 files
for step in "${STEPS[@]}"; do
  IFS='|' read -r name limit command <<<"$step"
  echo "gpu_check: $name (at most $limit s)"
  start=$SECONDS
  echo "==> $name <==" >>"$OUT_DIR/check.log"
  timeout --kill-after=10 "$limit" $command >>"$OUT_DIR/check.log" 2>&1
  code=$?
  printf '%s\t%s\t%s\n' "$name" "$code" "$((SECONDS - start))" >>"$OUT_DIR/steps.tsv"
  tail -n 3 "$OUT_DIR/check.log"
done
$SUMMARY
