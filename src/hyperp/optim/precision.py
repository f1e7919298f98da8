"""Precision on a CPU: bf16 or fp32, whichever this CPU runs faster, for Newton-Schulz and for
training under autocast.

CPUs differ by two orders of magnitude here: with AVX512-BF16 or AMX, bf16 matmuls run about as
fast as fp32 or faster, and a bf16 Newton-Schulz halves MuonH's step; without them PyTorch
emulates bf16 and the same computation is tens of times slower. So the default is measured: the
first use on a machine times a small computation in both precisions (a batched Newton-Schulz; a
small model's forward and backward, under bf16 autocast or none) and keeps the faster (fp32
unless bf16 is at least 1.2x faster), caches the answer per CPU model and torch version in the
hyperp cache directory, and says which it chose. ``HYPERP_CPU_NS_DTYPE=bf16|fp32`` and
``HYPERP_CPU_AUTOCAST_DTYPE=bf16|fp32`` pin the choices.
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
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = [
    "choose_cpu_autocast_dtype",
    "choose_cpu_ns_dtype",
    "cpu_autocast_choice",
    "cpu_ns_choice",
    "cpu_ns_dtype",
]

ENVIRONMENT_VARIABLE = "HYPERP_CPU_NS_DTYPE"
AUTOCAST_VARIABLE = "HYPERP_CPU_AUTOCAST_DTYPE"
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


def _time_autocast(dtype: torch.dtype, budget_s: float) -> float:
    """Best time of a few forward+backward passes of a small model (depth 2, width 256, 4 x 128
    tokens), under bf16 autocast or none."""
    from hyperp.model import ModelConfig, Transformer

    config = ModelConfig(depth=2, width=256, head_dim=64, vocab_size=4096, context=128)
    model = Transformer(config)
    tokens = torch.randint(0, 4096, (4, 129), generator=torch.Generator().manual_seed(0))
    best, start = float("inf"), time.perf_counter()
    for _ in range(3):
        begin = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            loss = model(tokens[:, :-1], tokens[:, 1:]).loss
        loss.backward()
        best = min(best, time.perf_counter() - begin)
        if time.perf_counter() - start > budget_s:
            break
    return best


def _choose(subject: str, timer: Callable[[torch.dtype, float], float]) -> tuple[torch.dtype, str]:
    fp32 = timer(torch.float32, 1.0)
    # An emulated bf16 call can take a second: give it a budget of a few fp32 calls.
    bf16 = timer(torch.bfloat16, max(0.2, 20 * fp32))
    ratio = fp32 / bf16
    choice = torch.bfloat16 if ratio >= BF16_MIN_SPEEDUP else torch.float32
    reason = (
        f"{subject} runs in {'bf16' if choice == torch.bfloat16 else 'fp32'} on this CPU "
        f"(bf16 measured {ratio:.2f}x the speed of fp32; needs >= {BF16_MIN_SPEEDUP}x)"
    )
    return choice, reason


def choose_cpu_ns_dtype(
    timer: Callable[[torch.dtype, float], float] = _time_newton_schulz,
) -> tuple[torch.dtype, str]:
    """Measure both precisions with ``timer(dtype, budget_s) -> seconds``; return the faster
    dtype and a sentence saying why."""
    return _choose("Newton-Schulz", timer)


def choose_cpu_autocast_dtype(
    timer: Callable[[torch.dtype, float], float] = _time_autocast,
) -> tuple[torch.dtype, str]:
    """The same choice for training's forward and backward under autocast."""
    return _choose("Training (autocast)", timer)


@dataclass(frozen=True)
class _Choice:
    variable: str  # pins the choice
    cache_prefix: str
    subject: str
    chooser: str  # the module-level function that measures


_NS = _Choice(ENVIRONMENT_VARIABLE, "cpu-ns-precision", "Newton-Schulz", "choose_cpu_ns_dtype")
_AUTOCAST = _Choice(
    AUTOCAST_VARIABLE, "cpu-autocast-precision", "Training (autocast)", "choose_cpu_autocast_dtype"
)


def _cache_file(prefix: str) -> Path:
    from hyperp.data.stdlib_corpus import cache_root

    key = f"{_cpu_model()}|{torch.__version__}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return cache_root() / f"{prefix}-{digest}.json"


def cpu_ns_dtype() -> torch.dtype:
    """The Newton-Schulz precision for this CPU (see the module docstring)."""
    return cpu_ns_choice()[0]


@functools.cache
def cpu_ns_choice() -> tuple[torch.dtype, str]:
    """``(dtype, why)`` for Newton-Schulz: decided once per process, measured once per machine."""
    return _cached_choice(_NS)


@functools.cache
def cpu_autocast_choice() -> tuple[torch.dtype, str]:
    """``(dtype, why)`` for training's autocast (fp32: none), decided like Newton-Schulz's."""
    return _cached_choice(_AUTOCAST)


def _cached_choice(choice: _Choice) -> tuple[torch.dtype, str]:
    pinned = os.environ.get(choice.variable, "").strip().lower()
    if pinned:
        if pinned not in ("bf16", "fp32"):
            raise ValueError(f"{choice.variable} must be bf16 or fp32, got {pinned!r}")
        dtype = torch.bfloat16 if pinned == "bf16" else torch.float32
        return dtype, f"{choice.subject} runs in {pinned} on this CPU ({choice.variable})"
    path = _cache_file(choice.cache_prefix)
    try:
        cached = json.loads(path.read_text())
        dtype = torch.bfloat16 if cached["dtype"] == "bf16" else torch.float32
        return dtype, f"{cached['reason']}; measured earlier, cached in {path}"
    except (OSError, ValueError, KeyError, TypeError):
        pass
    dtype, reason = globals()[choice.chooser]()
    print(f"{reason}; cached in {path}", file=sys.stderr)
    try:
        from hyperp.fileio import atomic_write_json

        name = "bf16" if dtype == torch.bfloat16 else "fp32"
        atomic_write_json(path, {"dtype": name, "reason": reason, "cpu": _cpu_model()})
    except OSError:
        pass  # a read-only cache only costs a re-measurement next time
    return dtype, reason
