#!/usr/bin/env bash
# The GPU check (see benchmarks/gpu_check.py): run on a machine with a CUDA GPU and a CUDA build
# of torch; under 8 minutes. Writes gpu_check.json into OUT_DIR, else $OUT, else gpu_check/.
#   bash benchmarks/gpu_check.sh [OUT_DIR] [gpu_check.py options, e.g. --budget-s 300]
# Uses the torch already installed: python3's, or that of a venv made here (.venv-gpu, with the
# system's packages) when hyperp is not importable; installs hyperp editable there, from PyPI if
# it can be reached, else without its dependencies (the check needs torch and numpy only).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu_check}}"
shift || true
python="${PYTHON:-python3}"
if ! "$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "no CUDA device visible to $python's torch: this check needs one GPU" >&2
    exit 1
fi
if ! "$python" -c "import hyperp" 2>/dev/null; then
    if [ ! -x .venv-gpu/bin/python ]; then
        "$python" -m venv --system-site-packages .venv-gpu || exit 1
    fi
    python=.venv-gpu/bin/python
    if ! "$python" -c "import hyperp" 2>/dev/null; then
        timeout 120 "$python" -m pip install -q -e . 2>/dev/null \
            || "$python" -m pip install -q --no-deps --no-build-isolation -e . \
            || export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
    fi
fi
export PYTHONUNBUFFERED=1
"$python" -c "import torch; print('torch', torch.__version__, 'on', torch.cuda.get_device_name())"
exec "$python" benchmarks/gpu_check.py --out "$out" "$@"
