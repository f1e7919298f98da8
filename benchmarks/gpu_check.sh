#!/usr/bin/env bash
# The GPU check (see benchmarks/gpu_check.py): run by hand on a machine with one CUDA GPU and a
# CUDA build of torch; under 10 minutes. Writes OUT_DIR/gpu_check.json (default gpu_check/).
#   bash benchmarks/gpu_check.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu_check}"
python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: this check needs one GPU')"
python3 -c "import hyperp" 2>/dev/null || python3 -m pip install -q --no-deps -e .
export PYTHONUNBUFFERED=1
python3 benchmarks/gpu_check.py --out "$out"
