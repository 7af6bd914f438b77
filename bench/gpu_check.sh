#!/usr/bin/env bash
# The real-GPU check of issue 17, runnable as is on a machine with one NVIDIA GPU and this repository:
#   bash bench/gpu_check.sh OUT_DIR
# One verdict a line (PASS/FAIL/SKIP and its figure); OUT_DIR gets results.json, gpu_check.log, the
# record logs, the exported rows and the report. Exit 0 when nothing failed. The checks are in
# bench/gpu_check.py (its docstring lists the GPU_CHECK_* variables, e.g. GPU_CHECK_TORCH=skip for a dry
# run); this wrapper only finds a python3 and holds the whole check to 8 minutes.
set -u
out="${1:?usage: bash bench/gpu_check.sh OUT_DIR}"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="$(command -v python3 || command -v python || true)"
if [ -z "$python" ]; then
    echo "FAIL python: no python3 on PATH"
    exit 1
fi
mkdir -p "$out"
timeout --kill-after=10 480 "$python" "$repo/bench/gpu_check.py" "$out"
rc=$?
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    echo "FAIL gpu_check: killed after 8 minutes (see $out/gpu_check.log)"
fi
exit "$rc"
