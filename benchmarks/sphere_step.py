"""The sphere step of MuonH/AdamH on many small matrices: all at once against one at a time.

The step (docs/method.md §2.3) is a norm, a scaled step, a norm and a rescale per matrix. Done
with a few multi-tensor calls for the whole group (hyperp.optim.updates.sphere_step with the
norms of hyperp.optim.sharding) it costs a constant number of operator calls; the loop it
replaced, kept below as the baseline, costs about ten per matrix, which on a GPU is bound by
kernel launches. Both run on copies of the same tensors in the same process, interleaved in
rounds; the ratio fused / loop of each round is printed as median (min-max).

    python benchmarks/sphere_step.py                       # 64 x 256^2 and 64 x 64^2, CPU
    python benchmarks/sphere_step.py --device cuda --rounds 9
    python benchmarks/sphere_step.py --optimizer 128 4   # whole MuonH steps, width 128, depth 4

``--optimizer WIDTH DEPTH`` times whole optimizer steps on a transformer's hidden matrices
(benchmarks/optim_step.py's shapes): MuonH, MuonH with the per-matrix loop, and the Muon
baseline, each round's times as ratios to Muon's.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from unittest import mock

import torch

from hyperp.optim import optimizers, updates
from hyperp.optim.sharding import Grid, MatrixLayout, reduce_slice_norms


def loop_slice_norms(layouts, grid, tensors, stats=None):
    """The norms as computed before the step was fused: a partial sum per matrix (one process)."""
    partials = []
    for layout, tensor in zip(layouts, tensors):
        squares = layout.view(tensor).float().square().sum(dim=(-2, -1))
        full = squares.new_zeros(layout.count)
        first, last = layout.slices_on(grid.shard_rank)
        full[first:last] = squares
        partials.append(full)
    return list(torch.cat(partials).sqrt().split([layout.count for layout in layouts]))


def loop_sphere_step(weights, directions, radii, *, lr, weight_decay, sphere_norms):
    """The step as it was before: one matrix at a time."""
    for w, d, radius, norm in zip(weights, directions, radii, sphere_norms(directions)):
        norm = norm.clamp_min(1e-30)
        w.sub_(d.float() * (lr * radius / norm / (1 - lr * weight_decay)))
    for w, radius, norm in zip(weights, radii, sphere_norms(weights)):
        w.mul_(radius / norm)


@contextlib.contextmanager
def per_matrix_sphere_step():
    """Inside: the optimizer classes take the per-matrix loop (for a same-process baseline)."""
    with (
        mock.patch.object(updates, "sphere_step", loop_sphere_step),
        mock.patch.object(optimizers, "reduce_slice_norms", loop_slice_norms),
    ):
        yield


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def compare(device: torch.device, count: int, size: int, rounds: int, calls: int) -> dict:
    """Seconds per call of each variant on ``count`` matrices of ``size x size``, per round."""
    generator = torch.Generator().manual_seed(0)
    layouts = [MatrixLayout.of((size, size), "batch", 1)] * count
    start = [torch.randn(1, size, size, generator=generator).to(device) for _ in range(count)]
    directions = [torch.randn(1, size, size, generator=generator).to(device) for _ in range(count)]
    radii = [w.norm().reshape(1, 1, 1) for w in start]

    def norms_with(reduce):
        def norms(views):
            return [n.reshape(1, 1, 1) for n in reduce(layouts, Grid(), views)]

        return norms

    variants = {
        "fused": (updates.sphere_step, norms_with(reduce_slice_norms)),
        "loop": (loop_sphere_step, norms_with(loop_slice_norms)),
    }
    weights = {name: [w.clone() for w in start] for name in variants}
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for round_index in range(rounds + 1):  # round 0 warms up
        for name, (step, norms) in variants.items():
            _sync(device)
            begin = time.perf_counter()
            for _ in range(calls):
                step(weights[name], directions, radii, lr=0.02, weight_decay=0.0,
                     sphere_norms=norms)  # fmt: skip
            _sync(device)
            if round_index:
                seconds[name].append((time.perf_counter() - begin) / calls)
    ratios = [f / loop for f, loop in zip(seconds["fused"], seconds["loop"])]
    gap = max((a - b).abs().max().item() for a, b in zip(weights["fused"], weights["loop"]))
    return {
        "matrices": f"{count} x {size}x{size}",
        "ms_per_call": {name: 1e3 * statistics.median(s) for name, s in seconds.items()},
        "fused_over_loop": [statistics.median(ratios), min(ratios), max(ratios)],
        "rounds": rounds,
        "max_abs_difference": gap,
    }


def optimizer_steps(device: torch.device, width: int, depth: int, rounds: int, calls: int) -> dict:
    """Whole steps of MuonH (fused), MuonH (loop) and Muon, interleaved; ratios to Muon."""
    from optim_step import hidden_matrix_shapes, make_params

    shapes = hidden_matrix_shapes(width, depth, 64, 4)
    variants = {
        "MuonH": (optimizers.MuonH, contextlib.nullcontext),
        "MuonH, loop": (optimizers.MuonH, per_matrix_sphere_step),
        "Muon": (optimizers.Muon, contextlib.nullcontext),
    }
    built = {}
    for name, (kind, context) in variants.items():
        torch.manual_seed(0)
        params = make_params(shapes, device)
        for p in params:
            p.grad = torch.randn_like(p)
        built[name] = (kind(params, lr=0.02), context)
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for round_index in range(rounds + 1):  # round 0 warms up
        for name, (optimizer, context) in built.items():
            _sync(device)
            begin = time.perf_counter()
            with context():
                for _ in range(calls):
                    optimizer.step()
            _sync(device)
            if round_index:
                seconds[name].append((time.perf_counter() - begin) / calls)
    report = {"matrices": len(shapes), "ms_per_step": {}, "over_muon": {}}
    for name, values in seconds.items():
        ratios = [v / m for v, m in zip(values, seconds["Muon"])]
        report["ms_per_step"][name] = 1e3 * statistics.median(values)
        report["over_muon"][name] = [statistics.median(ratios), min(ratios), max(ratios)]
    return report


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--count", type=int, default=64, help="matrices in the group")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 64])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--calls", type=int, default=20, help="steps timed per round")
    parser.add_argument("--optimizer", type=int, nargs=2, metavar=("WIDTH", "DEPTH"))
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.optimizer:
        result = optimizer_steps(device, *args.optimizer, args.rounds, args.calls)
        print(f"{result['matrices']} hidden matrices, width {args.optimizer[0]}:")
        for name, (median, low, high) in result["over_muon"].items():
            ms = result["ms_per_step"][name]
            print(f"  {name:12s} {ms:8.2f} ms per step, {median:.3f}x Muon ({low:.3f}-{high:.3f})")
        return
    for size in args.sizes:
        result = compare(device, args.count, size, args.rounds, args.calls)
        ms, (median, low, high) = result["ms_per_call"], result["fused_over_loop"]
        print(
            f"{result['matrices']}: fused {ms['fused']:.3f} ms, loop {ms['loop']:.3f} ms per "
            f"step; fused/loop {median:.3f}x ({low:.3f}-{high:.3f}) over {args.rounds} rounds; "
            f"max |difference| after {(args.rounds + 1) * args.calls} steps "
            f"{result['max_abs_difference']:.2e}"
        )


if __name__ == "__main__":
    main()
