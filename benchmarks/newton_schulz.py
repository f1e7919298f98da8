"""Newton-Schulz options: the paper's coefficients against Polar Express's, and the symmetric
``X Xᵀ`` product, for orthogonality error and time, in one process, interleaved.

Input: a stack of gradient-like matrices whose singular values spread over three decades. Error:
largest ``|sigma - 1|`` and the RMS entry of ``X Xᵀ - I`` of the result (in fp64). Time: each
option once per round, rounds interleaved; median and range over rounds, and the per-round ratio
to the paper's coefficients (median and range).

    python benchmarks/newton_schulz.py                       # CPU, 8 x 256 x 1024, fp32 and bf16
    python benchmarks/newton_schulz.py --device cuda --shape 16 1024 4096
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from hyperp.optim import newton_schulz

OPTIONS = {
    "paper": {"coefficients": "hyperp"},
    "polar express": {"coefficients": "polar_express"},
    "paper, symmetric": {"coefficients": "hyperp", "symmetric": True},
}


def gradient_like(count: int, rows: int, cols: int, device) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    k = min(rows, cols)
    u = torch.linalg.qr(torch.randn(count, rows, k, generator=generator))[0]
    v = torch.linalg.qr(torch.randn(count, cols, k, generator=generator))[0]
    return ((u * torch.logspace(0, -3, k)) @ v.mT).to(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def compare(device: torch.device, shape, dtype: torch.dtype, rounds: int) -> dict:
    """Error and interleaved timing of every option (see the module docstring)."""
    matrix = gradient_like(*shape, device)
    report: dict = {}
    for name, options in OPTIONS.items():
        out = newton_schulz(matrix, dtype=dtype, **options).double()
        small = min(out.shape[-2:])
        gram = out @ out.mT if out.shape[-2] == small else out.mT @ out
        eye = torch.eye(small, dtype=torch.float64, device=device)
        report[name] = {
            "max_abs_sigma_minus_1": float((torch.linalg.svdvals(out) - 1).abs().max()),
            "rms_gram_error": float((gram - eye).square().mean().sqrt()),
        }
    times: dict[str, list[float]] = {name: [] for name in OPTIONS}
    for round_index in range(rounds + 1):  # the first round warms up
        for name, options in OPTIONS.items():
            _sync(device)
            start = time.perf_counter()
            newton_schulz(matrix, dtype=dtype, **options)
            _sync(device)
            if round_index:
                times[name].append(time.perf_counter() - start)
    for name, values in times.items():
        ratios = [t / p for t, p in zip(values, times["paper"])]
        report[name] |= {
            "ms": [1e3 * statistics.median(values), 1e3 * min(values), 1e3 * max(values)],
            "vs_paper": [statistics.median(ratios), min(ratios), max(ratios)],
        }
    return report


def print_report(title: str, report: dict) -> None:
    print(f"\n{title}")
    print(f"{'option':18s} {'max|s-1|':>9s} {'rms XXt-I':>10s} {'ms (min-max)':>22s} "
          f"{'time / paper (min-max)':>24s}")  # fmt: skip
    for name, entry in report.items():
        ms, ratio = entry["ms"], entry["vs_paper"]
        print(
            f"{name:18s} {entry['max_abs_sigma_minus_1']:9.3f} {entry['rms_gram_error']:10.4f} "
            f"{ms[0]:9.2f} ({ms[1]:.2f}-{ms[2]:.2f})  {ratio[0]:10.3f} ({ratio[1]:.2f}-{ratio[2]:.2f})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shape", type=int, nargs=3, default=[8, 256, 1024])
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--json", help="also write the reports here")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{args.rounds} interleaved rounds")  # fmt: skip
    reports = {}
    for name in args.dtypes:
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[name]
        reports[name] = compare(device, args.shape, dtype, args.rounds)
        print_report(f"{' x '.join(map(str, args.shape))} in {name}", reports[name])
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(reports, handle, indent=2)


if __name__ == "__main__":
    main()
