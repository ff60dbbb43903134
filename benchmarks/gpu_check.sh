#!/usr/bin/env bash
# The GPU check of issue 18 (see benchmarks/gpu_check.py): the CUDA tests, W1 and the full dense rho sweep
# timed through `gnorm run` on the GPU, W2's per-seed T_grok against the CPU reference; all figures in
# one file, $OUT/gpu_check.json (or --out DIR). Under 8 minutes on one GPU.
#
#   benchmarks/gpu_check.sh                 # on a machine with a CUDA device
#   benchmarks/gpu_check.sh --cpu-smoke     # every piece shrunk, on the CPU (what the test runs)
#
# It uses this checkout's gnorm and gnorm-bench (PYTHONPATH), with ${PYTHON:-python}.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD:$PWD/plugins/gnorm-bench${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
exec "${PYTHON:-python}" benchmarks/gpu_check.py "$@"
