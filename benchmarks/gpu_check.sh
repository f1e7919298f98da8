#!/usr/bin/env bash
# The GPU check (see benchmarks/gpu_check.py): run on a machine with a CUDA GPU and a CUDA build
# of torch; under 8 minutes. Writes gpu_check.json into OUT_DIR, else $OUT, else gpu_check/.
#   bash benchmarks/gpu_check.sh [OUT_DIR] [gpu_check.py options, e.g. --budget-s 300]
# Uses the torch already installed ($PYTHON, default python3): hyperp from this source tree when
# it is not installed; only if that misses a dependency, a venv over the system's packages
# (.venv-gpu) with hyperp installed from PyPI.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-gpu_check}}"
shift || true
python="${PYTHON:-python3}"
if ! "$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "no CUDA device visible to $python's torch: this check needs one GPU" >&2
    exit 1
fi
needs="import hyperp.optim, hyperp.model, hyperp.train"
if ! "$python" -c "$needs" 2>/dev/null; then
    # The source tree itself, with the packages this Python already has ...
    export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
    if ! "$python" -c "$needs"; then
        # ... else a venv over them, hyperp installed with its dependencies (needs PyPI).
        [ -x .venv-gpu/bin/python ] || "$python" -m venv --system-site-packages .venv-gpu || exit 1
        python=.venv-gpu/bin/python
        timeout 300 "$python" -m pip install -q -e . || exit 1
    fi
fi
export PYTHONUNBUFFERED=1
"$python" -c "import torch; print('torch', torch.__version__, 'on', torch.cuda.get_device_name())"
exec "$python" benchmarks/gpu_check.py --out "$out" "$@"
