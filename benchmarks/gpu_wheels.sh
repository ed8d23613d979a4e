#!/usr/bin/env bash
# The wheels benchmarks/gpu_check.sh needs on the GPU machine beyond its image, downloaded here: that machine has no
# network. Its image (Python 3.12, CUDA torch 2.11, transformers 5.17, accelerate 1.15, peft, pandas, pyarrow, fsspec,
# huggingface_hub 1.33, pytest, scipy, matplotlib, rich, jinja2, psutil, ...; see the device tool's KINDS.md) lacks
# TRL and datasets, and datasets' own dill and multiprocess. Nothing the check runs imports deepspeed, evaluate or
# submitit, so none of them travel (seen on 2026-12-07: in a venv holding only the image's packages plus these
# wheels, align_proxy.recipe imports, each script of the check answers --help and its GPU tests collect).
#
#   benchmarks/gpu_wheels.sh DIR        # then carry DIR with the working tree; gpu_check.sh --wheels DIR installs it
#   PYTHON_VERSION=3.11 benchmarks/gpu_wheels.sh DIR   # for this machine's Python, to rehearse the install step:
#                                                      # gpu_check.sh --rehearse --wheels DIR
#
# Versions: TRL's and datasets' the CPU suite runs (trl 1.16.0, datasets 5.2.0), each inside pyproject.toml's range.
# datasets 5.2 wants pyarrow >= 24 and huggingface_hub >= 1.31: the image's hub is 1.33, its pyarrow version is
# unread. If `python3 -m pip show pyarrow` there says older than 24, DATASETS=4.8.5 takes the newest 4.x (pyarrow
# >= 21; it imports httpx, which the image has). --no-deps enforces none of these ranges. Pure-Python wheels for
# CPython 3.12 on manylinux x86-64, as the GPU machine installs them: --no-index --no-deps --target.
set -euo pipefail
DIR="${1:?usage: benchmarks/gpu_wheels.sh DIR}"
PYTHON="${PYTHON:-python3}"
LIMIT_MIB=40
WHEELS=(trl==1.16.0 "datasets==${DATASETS:-5.2.0}" dill==0.4.0 multiprocess==0.70.18)

mkdir -p "$DIR"
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --implementation cp \
    --python-version "${PYTHON_VERSION:-3.12}" \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --dest "$DIR" "${WHEELS[@]}" 2> >(grep -v "^WARNING: Location" >&2)
ls -l "$DIR"/*.whl | awk '{printf "  %8.2f MiB  %s\n", $5 / 1048576, $NF}'
total=$(cat "$DIR"/*.whl | wc -c)
count=$(ls "$DIR"/*.whl | wc -l)
awk -v n="$count" -v b="$total" -v l="$LIMIT_MIB" \
    'BEGIN { printf "gpu_wheels: %d wheels, %.2f MiB in all (limit %d MiB with the working tree)\n", n, b / 1048576, l }'
if [ "$total" -gt $((LIMIT_MIB * 1048576)) ]; then
    echo "gpu_wheels: over $LIMIT_MIB MiB: the working tree and the wheels must travel in 64 MiB" >&2
    exit 1
fi
