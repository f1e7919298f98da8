"""The GPU check: what one CUDA GPU does with hyperp, in under 10 minutes, as one JSON file.

1. bf16 training of the d8 dense preset (batch 16 x 4096 tokens) for a few hundred steps on the
   built-in corpus: tokens/s, MFU and peak memory, eager and with ``torch.compile``;
2. MuonH's step against ``torch.optim.Muon`` at equal (bf16) precision, on the hidden matrices of
   the d8 model;
3. the MoE expert computation (d8, 64 experts of hidden 512, 8 per token): PyTorch's grouped GEMM
   against one matmul per expert, forward and backward.

    bash benchmarks/gpu_check.sh                     # writes gpu_check/gpu_check.json
    python benchmarks/gpu_check.py --device cpu --smoke --out /tmp/check   # tiny, any machine
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hyperp.optim import MuonH
from optim_step import hidden_matrix_shapes, make_params


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def training(device: torch.device, steps: int, compile_model: bool, smoke: bool) -> dict:
    """Tokens/s and MFU (median over the logged steps after the first tenth) and peak memory."""
    from hyperp.train import load_config
    from hyperp.train.trainer import train

    overrides = {
        "train.steps": steps,
        "train.batch_size": 16,
        "train.log_every": max(1, steps // 20),
        "train.eval_batches": 0,
        "train.monitor_every": 0,
        "train.checkpoint_every": 0,
        "train.progress": False,
        "train.compile": compile_model,
        "train.device": device.type,
        "train.precision": "bf16",
    }
    if smoke:
        overrides |= {"model.depth": 2, "model.width": 64, "model.head_dim": 32,
                      "model.context": 64, "train.seq_len": 64, "train.batch_size": 4}  # fmt: skip
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    config = load_config("d8_dense", overrides)
    with tempfile.TemporaryDirectory() as out:
        result = train(config, Path(out) / "run", resume="never")
        records = [json.loads(line) for line in (Path(out) / "run/metrics.jsonl").open()]
    steady = [r for r in records if r["step"] > steps // 10 and "tokens_per_s" in r]
    return {
        "steps": steps,
        "compile": compile_model,
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in steady),
        "mfu": statistics.median(r["mfu"] for r in steady) if "mfu" in steady[0] else None,
        "peak_memory_gb": (
            torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        ),
        "final_loss": result.summary["train_loss"],
    }


def optimizer_step(device: torch.device, smoke: bool) -> dict:
    """Median step time of MuonH (bf16 Newton-Schulz) against torch.optim.Muon, interleaved."""
    width = 64 if smoke else 1024
    shapes = hidden_matrix_shapes(width, 2 if smoke else 8, 32 if smoke else 128, 4)
    builders = {
        "torch.optim.Muon": lambda p: torch.optim.Muon(p, lr=0.02, weight_decay=0.0),
        "MuonH": lambda p: MuonH(p, lr=0.02, ns_dtype=torch.bfloat16),
    }
    optimizers = {}
    for name, build in builders.items():
        torch.manual_seed(0)
        params = make_params(shapes, device)
        for p in params:
            p.grad = torch.randn_like(p)
        optimizers[name] = build(params)
    times: dict[str, list[float]] = {name: [] for name in optimizers}
    for repeat in range(3 if smoke else 25):
        for name, optimizer in optimizers.items():
            _sync(device)
            start = time.perf_counter()
            optimizer.step()
            _sync(device)
            if repeat >= 2:
                times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(t) for name, t in times.items()}
    return {
        "width": width,
        "matrices": len(shapes),
        "median_ms": {name: 1e3 * value for name, value in medians.items()},
        "muonh_over_torch_muon": medians["MuonH"] / medians["torch.optim.Muon"],
    }


def moe_experts(device: torch.device, smoke: bool) -> dict:
    """Forward+backward of the routed experts: grouped GEMM against the per-expert loop."""
    from hyperp.model.moe import expert_swiglu

    experts, width, hidden, tokens, k = (8, 64, 32, 256, 2) if smoke else (64, 1024, 512, 16384, 8)
    generator = torch.Generator(device="cpu").manual_seed(0)
    counts = torch.bincount(
        torch.randint(0, experts, (tokens * k,), generator=generator), minlength=experts
    )
    banks = [
        (torch.randn(experts, hidden, width, generator=generator) / width**0.5).to(device),
        (torch.randn(experts, hidden, width, generator=generator) / width**0.5).to(device),
        (torch.randn(experts, width, hidden, generator=generator) / hidden**0.5).to(device),
    ]
    banks = [b.bfloat16().requires_grad_() for b in banks]
    x = torch.randn(tokens * k, width, generator=generator).to(device).bfloat16().requires_grad_()
    counts = counts.to(device)
    usable = device.type == "cuda" and getattr(torch.nn.functional, "grouped_mm", None) is not None
    modes = {"per-expert loop": False, **({"grouped GEMM": True} if usable else {})}
    times: dict[str, list[float]] = {name: [] for name in modes}
    for repeat in range(3 if smoke else 20):
        for name, grouped in modes.items():
            _sync(device)
            start = time.perf_counter()
            out = expert_swiglu(x, counts, *banks, use_grouped_gemm=grouped)
            out.float().square().mean().backward()
            _sync(device)
            if repeat >= 2:
                times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(t) for name, t in times.items()}
    report = {"experts": experts, "tokens": tokens, "top_k": k,
              "median_ms": {n: 1e3 * v for n, v in medians.items()}}  # fmt: skip
    if "grouped GEMM" in medians:
        report["grouped_speedup"] = medians["per-expert loop"] / medians["grouped GEMM"]
    return report


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--compile-steps", type=int, default=200)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, a few steps (any device)")
    parser.add_argument("--out", default="gpu_check")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here; run with --device cpu --smoke to try the script")
    steps, compile_steps = (4, 4) if args.smoke else (args.steps, args.compile_steps)
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "smoke": args.smoke,
    }
    started = time.perf_counter()
    report["optimizer_step"] = optimizer_step(device, args.smoke)
    report["moe_experts"] = moe_experts(device, args.smoke)
    report["train_eager"] = training(device, steps, False, args.smoke)
    # torch.compile on a CPU needs a C++ toolchain; the smoke run checks the script, not that.
    if device.type == "cuda" or not args.smoke:
        report["train_compiled"] = training(device, compile_steps, True, args.smoke)
    report["wall_s"] = time.perf_counter() - started
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
