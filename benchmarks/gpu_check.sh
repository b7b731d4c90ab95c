#!/usr/bin/env bash
# GPU checks in one short run (a few minutes on one H100): installs nothing, prints a markdown table.
# Usage (repository root, on a CUDA machine whose Python has the project installed):
#   bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
PYTHONPATH=src "$PY" benchmarks/gpu_check.py "$@"
