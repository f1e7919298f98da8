"""Newton-Schulz precision on a CPU: bf16 or fp32, whichever this CPU runs faster.

CPUs differ by two orders of magnitude here: with AVX512-BF16 or AMX, bf16 matmuls run about as
fast as fp32 or faster, and a bf16 Newton-Schulz halves MuonH's step; without them PyTorch
emulates bf16 and the same computation is tens of times slower. So the default is measured: the
first use on a machine times a small batched Newton-Schulz in both precisions and keeps the
faster (fp32 unless bf16 is at least 1.2x faster), caches the answer per CPU model and torch
version in the hyperp cache directory, and says which it chose. ``HYPERP_CPU_NS_DTYPE=bf16|fp32``
pins the choice (the test suite pins fp32 so results do not depend on the machine).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

__all__ = ["choose_cpu_ns_dtype", "cpu_ns_choice", "cpu_ns_dtype"]

ENVIRONMENT_VARIABLE = "HYPERP_CPU_NS_DTYPE"
# bf16 must win clearly: it also rounds the orthogonalized update to ~3 significant digits.
BF16_MIN_SPEEDUP = 1.2


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _time_newton_schulz(dtype: torch.dtype, budget_s: float) -> float:
    """Best time of a few batched Newton-Schulz calls on 2 matrices of 192 x 768."""
    from hyperp.optim.newton_schulz import newton_schulz

    matrix = torch.randn(2, 192, 768, generator=torch.Generator().manual_seed(0))
    best, start = float("inf"), time.perf_counter()
    for _ in range(3):
        begin = time.perf_counter()
        newton_schulz(matrix, dtype=dtype)
        best = min(best, time.perf_counter() - begin)
        if time.perf_counter() - start > budget_s:
            break
    return best


def choose_cpu_ns_dtype(
    timer: Callable[[torch.dtype, float], float] = _time_newton_schulz,
) -> tuple[torch.dtype, str]:
    """Measure both precisions with ``timer(dtype, budget_s) -> seconds``; return the faster
    dtype and a sentence saying why."""
    fp32 = timer(torch.float32, 1.0)
    # An emulated bf16 call can take a second: give it a budget of a few fp32 calls.
    bf16 = timer(torch.bfloat16, max(0.2, 20 * fp32))
    ratio = fp32 / bf16
    choice = torch.bfloat16 if ratio >= BF16_MIN_SPEEDUP else torch.float32
    reason = (
        f"Newton-Schulz runs in {'bf16' if choice == torch.bfloat16 else 'fp32'} on this CPU "
        f"(bf16 measured {ratio:.2f}x the speed of fp32; needs >= {BF16_MIN_SPEEDUP}x)"
    )
    return choice, reason


def _cache_file() -> Path:
    from hyperp.data.stdlib_corpus import cache_root

    key = f"{_cpu_model()}|{torch.__version__}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return cache_root() / f"cpu-ns-precision-{digest}.json"


def cpu_ns_dtype() -> torch.dtype:
    """The Newton-Schulz precision for this CPU (see the module docstring)."""
    return cpu_ns_choice()[0]


@functools.cache
def cpu_ns_choice() -> tuple[torch.dtype, str]:
    """``(dtype, why)``: decided once per process, measured once per machine."""
    pinned = os.environ.get(ENVIRONMENT_VARIABLE, "").strip().lower()
    if pinned:
        if pinned not in ("bf16", "fp32"):
            raise ValueError(f"{ENVIRONMENT_VARIABLE} must be bf16 or fp32, got {pinned!r}")
        dtype = torch.bfloat16 if pinned == "bf16" else torch.float32
        return dtype, f"Newton-Schulz runs in {pinned} on this CPU ({ENVIRONMENT_VARIABLE})"
    path = _cache_file()
    try:
        cached = json.loads(path.read_text())
        dtype = torch.bfloat16 if cached["dtype"] == "bf16" else torch.float32
        return dtype, f"{cached['reason']}; measured earlier, cached in {path}"
    except (OSError, ValueError, KeyError, TypeError):
        pass
    dtype, reason = choose_cpu_ns_dtype()
    print(f"{reason}; cached in {path}", file=sys.stderr)
    try:
        from hyperp.fileio import atomic_write_json

        name = "bf16" if dtype == torch.bfloat16 else "fp32"
        atomic_write_json(path, {"dtype": name, "reason": reason, "cpu": _cpu_model()})
    except OSError:
        pass  # a read-only cache only costs a re-measurement next time
    return dtype, reason
