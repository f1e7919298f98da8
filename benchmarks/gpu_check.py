"""The GPU check: what one CUDA GPU does with hyperp, in under 8 minutes, as one JSON file.

Each measurement runs inside a global time budget (``--budget-s``); one that fails prints its
error and the check goes on; one that would not fit in what is left is skipped and says so.

1. Newton-Schulz coefficient tables (the paper's, Polar Express) and the symmetric ``X Xᵀ``
   product: orthogonality error and time on a stack of d8-sized matrices, interleaved rounds;
2. training the d8 dense model (batch 16 x 4096 tokens, bf16 autocast, random tokens): tokens/s,
   MFU against the GPU's dense bf16 peak and peak memory, eager against ``torch.compile`` and
   against per-block activation checkpointing, in interleaved rounds; the optimizer's share of a
   step, MuonH minus the Muon baseline, and the same with MuonH's sphere step one matrix at a
   time (the loop it replaced, from benchmarks/sphere_step.py);
3. MuonH's step against ``torch.optim.Muon`` at equal (bf16) precision, the sphere step alone
   on 64 matrices, all at once against one at a time, and a profile of the MuonH and Muon steps
   on the training model (the operators with the most self time);
4. the MoE expert computation: grouped GEMM against one matmul per expert;
5. the sharded MuonH step on 2 GPUs against 1 (skipped with one GPU), and the bytes the sharded
   exchange sends per rank and step (2 gloo processes on the CPU: a count, not a timing).

    bash benchmarks/gpu_check.sh                     # writes $OUT or gpu_check/gpu_check.json
    python benchmarks/gpu_check.py --device cpu --smoke --out /tmp/check   # tiny, any machine
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hyperp.optim import MuonH
from optim_step import hidden_matrix_shapes, measure
from sphere_step import per_matrix_sphere_step

# Dense bf16 tensor-core peaks (FLOP/s, no sparsity) of the GPUs this check knows.
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "H800": 989e12, "A100": 312e12, "L40S": 362e12}


class Budget:
    """Seconds left of the whole check; a section that needs more than is left is skipped."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.perf_counter() + seconds

    def left(self) -> float:
        return self.deadline - time.perf_counter()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _spread(values: list[float]) -> dict:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def _median_interval(values: list[float], replicates: int = 2000) -> list[float]:
    """A 95% percentile-bootstrap interval of the median (the verdict reads its upper end)."""
    generator = torch.Generator().manual_seed(0)
    data = torch.tensor(values, dtype=torch.float64)
    picks = torch.randint(0, len(values), (replicates, len(values)), generator=generator)
    medians = data[picks].median(dim=1).values
    return [medians.quantile(0.025).item(), medians.quantile(0.975).item()]


# -- 1. Newton-Schulz -------------------------------------------------------------------------


def newton_schulz_options(device: torch.device, smoke: bool, budget: Budget) -> dict:
    """benchmarks/newton_schulz.py at d8's MLP shape (16 x 1024 x 4096) in bf16."""
    from newton_schulz import compare

    shape = (4, 32, 128) if smoke else (16, 1024, 4096)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"shape": shape, "dtype": str(dtype),
            "options": compare(device, shape, dtype, 3 if smoke else 15)}  # fmt: skip


# -- 2. training ------------------------------------------------------------------------------


def _peak(device: torch.device) -> float:
    if device.type != "cuda":
        return 0.0
    name = torch.cuda.get_device_name(device)
    return next((value for key, value in PEAK_BF16.items() if key in name), 0.0)


def _model_config(smoke: bool, size=None):
    from hyperp.model import ModelConfig

    if size:  # depth, width: a scaled-down d8 for a CPU
        return ModelConfig(depth=size[0], width=size[1], head_dim=64, vocab_size=8192, context=512)
    if smoke:
        return ModelConfig(depth=2, width=64, head_dim=32, n_kv_heads=1, context=64, vocab_size=512)
    return ModelConfig(
        depth=8, head_dim=128, n_kv_heads=4, context=4096, qk_norm=True, gated_attention=True,
        vocab_size=32768,
    )  # fmt: skip


class _Variant:
    """One model + optimizer trained in rounds: eager, compiled or activation-checkpointed."""

    def __init__(
        self,
        config,
        device,
        method: str,
        compile_model: bool,
        checkpoint: bool,
        autocast: bool,
        sphere_loop: bool = False,
    ) -> None:
        from hyperp.model import Transformer
        from hyperp.optim import build_optimizer
        from hyperp.optim.roles import assign_roles

        torch.manual_seed(0)
        self.model = Transformer(config).to(device)
        if checkpoint:
            from hyperp.model.transformer import checkpoint_blocks

            checkpoint_blocks(self.model)
        roles = {info.name: info.role for info in assign_roles(self.model)}
        self.optimizer = build_optimizer(self.model, method, lr=0.004, roles=roles)
        self.module = torch.compile(self.model) if compile_model else self.model
        self.device, self.autocast = device, autocast
        # The sphere step one matrix at a time, as before it was fused (a baseline).
        self.optimizer_context = per_matrix_sphere_step if sphere_loop else contextlib.nullcontext
        self.step_times: list[float] = []
        self.optimizer_times: list[float] = []
        self.peak_bytes = 0

    def run(self, tokens: torch.Tensor, steps: int) -> float:
        """Train ``steps`` steps; return the seconds they took (synchronized)."""
        device = self.device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        _sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            begin = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.autocast):
                loss = self.module(tokens[:, :-1], tokens[:, 1:]).loss
            loss.backward()
            _sync(device)
            middle = time.perf_counter()
            with self.optimizer_context():
                self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            _sync(device)
            end = time.perf_counter()
            self.step_times.append(end - begin)
            self.optimizer_times.append(end - middle)
        elapsed = time.perf_counter() - start
        if device.type == "cuda":
            self.peak_bytes = max(self.peak_bytes, torch.cuda.max_memory_allocated(device))
        return elapsed


def training(
    device: torch.device,
    smoke: bool,
    budget: Budget,
    variants: list[str],
    shape=None,
    size=None,
    autocast: bool = True,
    rounds_steps: tuple[int, int] | None = None,
) -> dict:
    """Interleaved rounds of each variant; tokens/s ratios against eager per round.
    ``autocast=False``: every variant in fp32 (on a CPU that runs bf16 slower);
    ``rounds_steps``: rounds, and steps of each variant per round."""
    config = _model_config(smoke, size)
    batch, length = shape or ((2, 64) if smoke else (16, 4096))
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, config.vocab, (batch, length + 1), generator=generator).to(device)
    specs = {  # method, compile, checkpoint, bf16 autocast, sphere step one matrix at a time
        "eager": ("hyperp", False, False, autocast, False),
        "compiled": ("hyperp", True, False, autocast, False),
        "checkpointed": ("hyperp", False, True, autocast, False),
        "muon eager": ("muon", False, False, autocast, False),
        "fp32 eager": ("hyperp", False, False, False, False),
        "sphere loop eager": ("hyperp", False, False, autocast, True),
    }
    runs: dict[str, _Variant] = {}
    report: dict = {"batch": [batch, length], "params": config.num_params(), "variants": {}}
    for name in ["eager", *variants]:
        try:
            started = time.perf_counter()
            runs[name] = _Variant(config, device, *specs[name])
            runs[name].run(tokens, 2 if smoke else 3)  # warm-up (and compilation)
            report["variants"][name] = {"warmup_s": time.perf_counter() - started}
        except Exception as error:  # one variant's failure (say, no compiler) spares the rest
            report["variants"][name] = {"error": f"{type(error).__name__}: {error}"}
            traceback.print_exc()
            runs.pop(name, None)
    steps, rounds = (2, 3) if smoke else (5 if device.type == "cuda" else 1, 7)
    if rounds_steps:
        rounds, steps = rounds_steps
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        if budget.left() < 20:
            report["stopped_early"] = "time budget"
            break
        for name, variant in runs.items():
            rates[name].append(steps * batch * length / variant.run(tokens, steps))
    flops_per_token = config.scale().flops_per_token
    peak = _peak(device)
    shares: dict[str, list[float]] = {}  # the optimizer's share of each measured step
    for name, values in rates.items():
        if not values:
            continue
        variant = runs[name]
        entry = report["variants"][name]
        entry["tokens_per_s"] = _spread(values)
        if peak:
            entry["mfu"] = flops_per_token * statistics.median(values) / peak
        if values and rates["eager"]:
            per_round = [v / e for v, e in zip(values, rates["eager"])]
            entry["tokens_per_s_vs_eager"] = _spread(per_round)
        share = [o / s for o, s in zip(variant.optimizer_times, variant.step_times)]
        shares[name] = share[-len(values) * steps :]
        entry["optimizer_share"] = _spread(shares[name])
        if device.type == "cuda":
            entry["peak_memory_gb"] = variant.peak_bytes / 2**30
    if shares.get("muon eager"):  # step by step: the i-th steps of two variants ran one round
        for name, key in (("eager", "muonh"), ("sphere loop eager", "sphere_loop")):
            if shares.get(name):
                points = [100 * (a - b) for a, b in zip(shares[name], shares["muon eager"])]
                entry = {**_spread(points), "median_95ci": _median_interval(points)}
                report[f"optimizer_share_{key}_minus_muon_points"] = entry
    report["peak_bf16_flops"] = peak
    report["flops_per_token"] = flops_per_token
    return report


# -- 3, 4. optimizer step, MoE experts -----------------------------------------------------------


def optimizer_step(device: torch.device, smoke: bool, budget: Budget) -> dict:
    """Median step time of MuonH (bf16 Newton-Schulz) against torch.optim.Muon, interleaved."""
    width = 64 if smoke else 1024
    shapes = hidden_matrix_shapes(width, 2 if smoke else 8, 32 if smoke else 128, 4)
    builders = {
        "torch.optim.Muon": lambda p: torch.optim.Muon(p, lr=0.02, weight_decay=0.0),
        "MuonH": lambda p: MuonH(p, lr=0.02, ns_dtype=torch.bfloat16),
    }
    medians = measure(builders, shapes, device, warmup=2, repeats=3 if smoke else 25)
    return {
        "width": width,
        "matrices": len(shapes),
        "median_ms": {name: 1e3 * value for name, value in medians.items()},
        "muonh_over_torch_muon": medians["MuonH"] / medians["torch.optim.Muon"],
    }


def optimizer_profile(device: torch.device, smoke: bool, budget: Budget) -> dict:
    """Where an optimizer step's time goes: torch.profiler over steps of MuonH and of Muon on the
    training model's parameters (random gradients), the operators with the most self time."""
    from torch.profiler import ProfilerActivity, profile

    from hyperp.model import Transformer
    from hyperp.optim import build_optimizer

    model = Transformer(_model_config(smoke)).to(device)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    report: dict = {}
    for method in ("hyperp", "muon"):
        optimizer = build_optimizer(model, method, lr=1e-4)
        for _ in range(2):  # warm-up: state, workspaces
            optimizer.step()
        _sync(device)
        steps = 2 if smoke else 5
        with profile(activities=activities) as prof:
            for _ in range(steps):
                optimizer.step()
            _sync(device)
        events = [e for e in prof.key_averages() if not e.key.startswith("Optimizer.")]
        events.sort(key=lambda e: getattr(e, sort), reverse=True)  # no user annotations
        total = sum(getattr(e, sort) for e in events) / steps
        report[method] = {
            "ms_per_step": total / 1e3,
            "top": [{"op": e.key, "ms_per_step": getattr(e, sort) / steps / 1e3,
                     "calls_per_step": e.count / steps} for e in events[:12]],
        }  # fmt: skip
    return report


def sphere_steps(device: torch.device, smoke: bool, budget: Budget) -> dict:
    """benchmarks/sphere_step.py: 64 matrices of d8's width and of a quarter of it."""
    from sphere_step import compare

    count, sizes = (8, (32,)) if smoke else (64, (1024, 256))
    return {f"{count}x{size}": compare(device, count, size, 3 if smoke else 7, 5 if smoke else 20)
            for size in sizes}  # fmt: skip


def moe_experts(device: torch.device, smoke: bool, budget: Budget) -> dict:
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


# -- 5. sharded step, exchange bytes ---------------------------------------------------------------


def _distributed_optim(
    world: int, device: str, budget: Budget, smoke: bool, ns_dtype: str = "bf16"
) -> list[dict]:
    """One run of benchmarks/distributed_optim.py's worker on ``world`` processes."""
    script = Path(__file__).resolve().parent / "distributed_optim.py"
    with tempfile.TemporaryDirectory() as out:
        args = [str(script), "--worker", "--out", out, "--device", device, "--ns-dtype", ns_dtype]
        args += ["--depth", "2" if smoke else "4", "--width", "128" if smoke else "512"]
        args += ["--repeats", "3", "--warmup", "1"]
        if world == 1:
            command = [sys.executable, *args]
        else:
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
            command += ["--nproc-per-node", str(world), *args]
        src = str(Path(__file__).resolve().parents[1] / "src")
        env = {**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": "1"}
        timeout = max(10.0, budget.left() - 5)
        subprocess.run(command, check=True, capture_output=True, env=env, timeout=timeout)
        return [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(world)]


def sharded_step(device: torch.device, smoke: bool, budget: Budget) -> dict:
    """2 GPUs against 1 under FSDP2, interleaved, when there are 2 GPUs."""
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    if gpus < 2:
        return {"skipped": f"needs 2 GPUs, this machine has {gpus}"}
    ratios = []
    for _ in range(3 if smoke else 7):
        if budget.left() < 30:
            break
        one = _distributed_optim(1, "cuda", budget, smoke)[0]["step_s"]
        two = max(r["step_s"] for r in _distributed_optim(2, "cuda", budget, smoke))
        ratios.append(two / one)
    return {"step_2_over_1": _spread(ratios)} if ratios else {"skipped": "time budget"}


def exchange_bytes(device: torch.device, smoke: bool, budget: Budget) -> dict:
    """Bytes the sharded exchange sends per rank and step on 2 gloo CPU processes (FSDP2), with
    Newton-Schulz in bf16 and in fp32 (the fp32 exchange is what every step sent before the
    exchange travelled in Newton-Schulz's precision)."""
    report: dict = {"world": 2}
    for ns_dtype in ("bf16", "fp32"):
        ranks = _distributed_optim(2, "cpu", budget, smoke, ns_dtype)
        report[f"sent_bytes_per_rank_{ns_dtype}"] = [r["sent_bytes"] for r in ranks]
    bf16, fp32 = report["sent_bytes_per_rank_bf16"], report["sent_bytes_per_rank_fp32"]
    report["bf16_over_fp32"] = max(bf16) / max(fp32)
    return report


# -- main -------------------------------------------------------------------------------------------


def _summary(report: dict) -> list[str]:
    """A few lines for a person: the headline of each section, or its error."""
    lines = [f"{report['device']}, torch {report['torch']}, {report.get('wall_s', 0):.0f} s"]
    sections = report["sections"]
    ns = sections.get("newton_schulz", {})
    for name, entry in ns.get("options", {}).items():
        ratio = entry["vs_paper"]
        lines.append(
            f"NS {name:17s} max|s-1| {entry['max_abs_sigma_minus_1']:.3f}  rms(XXt-I) "
            f"{entry['rms_gram_error']:.4f}  {entry['ms'][0]:.2f} ms  {ratio[0]:.2f}x paper "
            f"({ratio[1]:.2f}-{ratio[2]:.2f})"
        )
    train = sections.get("training", {})
    for name, entry in train.get("variants", {}).items():
        if "tokens_per_s" in entry:
            line = f"train {name:17s} {entry['tokens_per_s']['median']:10.0f} tok/s"
            if "mfu" in entry:
                line += f"  MFU {100 * entry['mfu']:.1f}%"
            if "tokens_per_s_vs_eager" in entry and name != "eager":
                r = entry["tokens_per_s_vs_eager"]
                line += f"  {r['median']:.2f}x eager ({r['min']:.2f}-{r['max']:.2f})"
            line += f"  optimizer {100 * entry['optimizer_share']['median']:.1f}% of a step"
            if "peak_memory_gb" in entry:
                line += f"  peak {entry['peak_memory_gb']:.1f} GB"
            lines.append(line)
        elif "error" in entry:
            lines.append(f"train {name}: {entry['error'][:200]}")
    for key, what in (("muonh", "MuonH"), ("sphere_loop", "MuonH, sphere step per matrix,")):
        points = train.get(f"optimizer_share_{key}_minus_muon_points")
        if points:
            low, high = points.get("median_95ci", (points["min"], points["max"]))
            lines.append(
                f"optimizer share, {what} minus Muon: {points['median']:+.1f} points, median's "
                f"95% interval [{low:+.1f}, {high:+.1f}] ({points['min']:+.1f} to "
                f"{points['max']:+.1f}, {points['n']} steps)"
            )
    step = sections.get("optimizer_step", {})
    if "muonh_over_torch_muon" in step:
        lines.append(f"MuonH step / torch.optim.Muon step: {step['muonh_over_torch_muon']:.3f}x")
    for entry in sections.get("sphere_step", {}).values():
        if isinstance(entry, dict) and "fused_over_loop" in entry:
            ratio = entry["fused_over_loop"]
            lines.append(
                f"sphere step {entry['matrices']}: all at once / one at a time {ratio[0]:.3f}x "
                f"({ratio[1]:.3f}-{ratio[2]:.3f}), {entry['ms_per_call']['fused']:.2f} ms"
            )
    for method, entry in sections.get("optimizer_profile", {}).items():
        if isinstance(entry, dict) and "top" in entry:
            top = ", ".join(f"{o['op']} {o['ms_per_step']:.2f}" for o in entry["top"][:5])
            lines.append(f"profile {method}: {entry['ms_per_step']:.1f} ms/step; top ms: {top}")
    moe = sections.get("moe_experts", {})
    if "grouped_speedup" in moe:
        lines.append(f"MoE grouped GEMM speedup: {moe['grouped_speedup']:.2f}x")
    for name in ("sharded_step", "exchange_bytes"):
        entry = sections.get(name, {})
        if entry:
            lines.append(f"{name}: {json.dumps(entry)[:200]}")
    for name, entry in sections.items():
        if isinstance(entry, dict) and "error" in entry:
            lines.append(f"{name} FAILED: {entry['error'][:300]}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--budget-s", type=float, default=420.0, help="whole-check time budget")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, a few steps (any device)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    parser.add_argument("--sections", nargs="+", help="run only these sections")
    parser.add_argument("--variants", nargs="+", help="training variants besides eager")
    parser.add_argument("--train-shape", type=int, nargs=2, help="batch and sequence length")
    parser.add_argument("--model-size", type=int, nargs=2, help="depth and width instead of d8")
    parser.add_argument(
        "--no-autocast", action="store_true", help="train every variant in fp32 (for a CPU)"
    )
    parser.add_argument(
        "--rounds-steps", type=int, nargs=2, help="training rounds, and steps per round"
    )
    parser.add_argument("--out", default=os.environ.get("OUT") or "gpu_check")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here; run with --device cpu --smoke to try the script")
    budget = Budget(args.budget_s)
    report: dict = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "smoke": args.smoke,
        "budget_s": args.budget_s,
        "sections": {},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # fp32 only off the GPU: on an H200 at 16 x 4096 fp32 attention falls back to the kernel
    # that materializes every score matrix (16 GiB a layer) and runs out of memory.
    fp32 = [] if device.type == "cuda" else ["fp32 eager"]
    variants = args.variants or (
        ["muon eager", "sphere loop eager", *fp32, "checkpointed"]
        + ([] if args.no_compile else ["compiled"])
    )
    # (name, seconds it needs at least, function); cheapest and most wanted first.
    sections: list[tuple[str, float, Callable[[], dict]]] = [
        ("newton_schulz", 20, lambda: newton_schulz_options(device, args.smoke, budget)),
        (
            "training",
            90,
            lambda: training(
                device,
                args.smoke,
                budget,
                variants,
                args.train_shape,
                args.model_size,
                autocast=not args.no_autocast,
                rounds_steps=args.rounds_steps,
            ),
        ),
        ("optimizer_step", 20, lambda: optimizer_step(device, args.smoke, budget)),
        ("sphere_step", 15, lambda: sphere_steps(device, args.smoke, budget)),
        ("optimizer_profile", 15, lambda: optimizer_profile(device, args.smoke, budget)),
        ("moe_experts", 20, lambda: moe_experts(device, args.smoke, budget)),
        ("sharded_step", 60, lambda: sharded_step(device, args.smoke, budget)),
        ("exchange_bytes", 30, lambda: exchange_bytes(device, args.smoke, budget)),
    ]
    started = time.perf_counter()
    for name, needs, run in sections:
        if args.sections and name not in args.sections:
            continue
        if budget.left() < needs:
            report["sections"][name] = {"skipped": f"{budget.left():.0f} s left, needs {needs}"}
            print(f"[{name}] skipped: time budget", flush=True)
            continue
        print(f"[{name}] ...", flush=True)
        begin = time.perf_counter()
        try:
            report["sections"][name] = run()
        except Exception as error:  # report it and go on with the next measurement
            traceback.print_exc()
            report["sections"][name] = {"error": f"{type(error).__name__}: {error}"}
        report["sections"][name]["seconds"] = time.perf_counter() - begin
        print(f"[{name}] {report['sections'][name]['seconds']:.0f} s", flush=True)
        (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")  # so far
    report["wall_s"] = time.perf_counter() - started
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    print("\n".join(_summary(report)))
    print(f"wrote {out / 'gpu_check.json'}")


if __name__ == "__main__":
    main()
