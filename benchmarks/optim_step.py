"""Optimizer-step time: MuonH against torch.optim.Muon and AdamW, in the same process.

The parameter set is the hidden matrices of a paper-family transformer (q, k, v, o, the attention
gate, three SwiGLU matrices per block). Each optimizer steps the same tensors with the same
gradients; steps are interleaved round-robin and the median of repeated timings is reported as a
ratio to torch.optim.Muon, so machine noise affects all alike.

    python benchmarks/optim_step.py                 # widths 256 and 512, depth 8, CPU
    python benchmarks/optim_step.py --device cuda --widths 1024 2048
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from hyperp.optim import Muon, MuonH


def hidden_matrix_shapes(
    width: int, depth: int, head_dim: int, kv_heads: int
) -> list[tuple[int, int]]:
    heads = max(1, 2 * width // head_dim)
    shapes = []
    for _ in range(depth):
        shapes += [
            (heads * head_dim, width),  # q
            (kv_heads * head_dim, width),  # k
            (kv_heads * head_dim, width),  # v
            (width, heads * head_dim),  # o
            (heads, width),  # attention gate
            (4 * width, width),  # SwiGLU gate
            (4 * width, width),  # SwiGLU up
            (width, 4 * width),  # SwiGLU down
        ]
    return shapes


def make_params(shapes, device):
    params = []
    for rows, cols in shapes:
        weight = torch.empty(rows, cols, device=device)
        nn.init.kaiming_uniform_(weight, a=5**0.5)
        params.append(nn.Parameter(weight))
    return params


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(optimizers, repeats: int, device) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in optimizers}
    for _ in range(repeats):
        for name, (opt, _params) in optimizers.items():
            sync(device)
            start = time.perf_counter()
            opt.step()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def measure(builders, shapes, device, warmup: int, repeats: int) -> dict[str, float]:
    """Median step time of each optimizer on its own copy of the same tensors and gradients."""
    optimizers = {}
    for name, build in builders.items():
        torch.manual_seed(0)
        params = make_params(shapes, device)
        for p in params:
            p.grad = torch.randn_like(p)
        optimizers[name] = (build(params), params)
    time_steps(optimizers, warmup, device)
    times = time_steps(optimizers, repeats, device)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--widths", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave default)")
    parser.add_argument(
        "--bf16-max-width",
        type=int,
        default=None,
        help="skip bf16 Newton-Schulz above this width (default: no limit on CUDA and on a CPU "
        "whose bf16 is fast; 256 on a CPU where bf16 matmuls run far slower than fp32)",
    )
    parser.add_argument("--bf16-repeats", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    slow_bf16 = False
    if device.type == "cpu":
        from hyperp.optim.precision import cpu_ns_choice

        choice, why = cpu_ns_choice()
        print(why)
        slow_bf16 = choice != torch.bfloat16
    bf16_limit = args.bf16_max_width or (256 if slow_bf16 else 1 << 30)
    for width in args.widths:
        shapes = hidden_matrix_shapes(width, args.depth, args.head_dim, args.kv_heads)
        numel = sum(r * c for r, c in shapes)
        print(
            f"\nwidth {width}, depth {args.depth}: {len(shapes)} matrices, {numel / 1e6:.2f}M parameters"
        )
        fp32 = {
            "MuonH fp32 NS": lambda p: MuonH(p, lr=0.02, ns_dtype=torch.float32),
            "Muon baseline fp32 NS": lambda p: Muon(p, lr=0.02, ns_dtype=torch.float32),
            "torch.optim.AdamW (foreach)": lambda p: torch.optim.AdamW(p, lr=1e-3, foreach=True),
        }
        bf16 = {
            "torch.optim.Muon (bf16 NS)": lambda p: torch.optim.Muon(p, lr=0.02, weight_decay=0.0),
            "MuonH bf16 NS": lambda p: MuonH(p, lr=0.02, ns_dtype=torch.bfloat16),
        }
        medians = measure(fp32, shapes, device, args.warmup, args.repeats)
        if width <= bf16_limit:
            medians.update(measure(bf16, shapes, device, 1, args.bf16_repeats))
        else:
            print(f"(bf16 Newton-Schulz skipped above width {bf16_limit}; see --bf16-max-width)")
        reference = medians.get("torch.optim.Muon (bf16 NS)")
        baseline = medians["Muon baseline fp32 NS"]
        adamw = medians["torch.optim.AdamW (foreach)"]
        print(
            f"{'optimizer':30s} {'median ms':>10s} {'vs torch Muon':>14s} "
            f"{'vs Muon fp32':>13s} {'vs AdamW':>9s}"
        )
        for name, median in medians.items():
            versus_torch = f"{median / reference:13.3f}x" if reference else f"{'-':>14s}"
            print(
                f"{name:30s} {median * 1e3:10.2f} {versus_torch} {median / baseline:12.3f}x "
                f"{median / adamw:8.1f}x"
            )
        if reference:
            ratio = medians["MuonH bf16 NS"] / reference
            verdict = "met" if ratio <= 1.0 else "MISSED"
            print(
                f"MuonH against torch.optim.Muon at equal (bf16) precision: {ratio:.3f}x "
                f"(goal <= 1.0: {verdict}; moonshot 0.8)"
            )


if __name__ == "__main__":
    main()
