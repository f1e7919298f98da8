"""The sharded optimizer on 1, 2 and 4 gloo processes: state bytes, step time, bytes exchanged.

Each world size trains the same paper-family model (FSDP2 for 2 and 4 processes, plain for 1)
with one thread per process; every rank reports its optimizer-state bytes, the median time of
``optimizer.step()`` (between barriers) and the bytes it sent and received per step. World sizes
are launched round-robin (1, 2, 4, 1, 2, 4, ...) so that machine noise hits all alike; the medians
over rounds are reported as ratios against one process. Then an analytic table of per-rank memory
(parameters, gradients, optimizer state, fp32) for 1B- and 7B-parameter models on 8 to 512 ranks.

    python benchmarks/distributed_optim.py                   # depth 4, width 256, 3 rounds
    python benchmarks/distributed_optim.py --width 512 --rounds 5 --strategy hsdp
Goals: state per rank <= 1.1/W of one process's; step time at 2 processes <= 0.75x of one's
(on 2 cores, 1 thread each); 7B on 64 ranks <= 2 GB per rank.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from hyperp.model import ModelConfig, Transformer


def model_config(depth: int, width: int) -> ModelConfig:
    return ModelConfig(depth=depth, width=width, head_dim=64, vocab_size=8192, context=128)


def worker(args: argparse.Namespace) -> None:
    """One rank: build, shard, take real gradients, time ``optimizer.step()``."""
    import torch.distributed as dist

    from hyperp.optim import build_optimizer
    from hyperp.optim.roles import role_map
    from hyperp.train.distributed import parallelize, setup_distributed

    torch.set_num_threads(1)
    env = setup_distributed(args.device)
    torch.manual_seed(0)
    model = Transformer(model_config(args.depth, args.width)).to(env.device)
    roles = role_map(model)
    strategy = args.strategy if env.world_size > 1 else "single"
    parallel = parallelize(model, env, strategy, shard_size=2)
    optimizer = build_optimizer(
        model, "hyperp", lr=0.01, roles=roles, replicate_group=parallel.replicate_group,
        ns_dtype=args.ns_dtype,
    )  # fmt: skip
    tokens = torch.randint(0, 8192, (2, 65), generator=torch.Generator().manual_seed(env.rank))
    tokens = tokens.to(env.device)
    parallel.module(tokens[:, :-1], tokens[:, 1:]).loss.backward()
    times = []
    for repeat in range(args.warmup + args.repeats):
        env.barrier()
        start = time.perf_counter()
        optimizer.step()
        if env.device.type == "cuda":
            torch.cuda.synchronize()
        env.barrier()
        if repeat >= args.warmup:
            times.append(time.perf_counter() - start)
    if args.profile:  # every rank steps; rank 0 records
        _profile(optimizer, env, Path(args.out, "profile.txt"))
    stats = optimizer.step_stats
    report = {
        "rank": env.rank,
        "world_size": env.world_size,
        "state_bytes": optimizer.state_bytes(),
        "step_s": statistics.median(times),
        "sent_bytes": stats.sent_bytes,
        "received_bytes": stats.received_bytes,
        "ns_flops": stats.ns_flops,
    }
    Path(args.out, f"rank{env.rank}.json").write_text(json.dumps(report))
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _profile(optimizer, env, path: Path) -> None:
    """CPU time of three steps on rank 0 by operator (torch.profiler), as a table."""
    import contextlib

    from torch.profiler import ProfilerActivity, profile

    recording = profile(activities=[ProfilerActivity.CPU]) if env.rank == 0 else None
    with recording or contextlib.nullcontext():
        for _ in range(3):
            optimizer.step()
    if recording is not None:
        table = recording.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
        path.write_text(table)


def launch(world: int, args: argparse.Namespace) -> list[dict]:
    with tempfile.TemporaryDirectory() as out:
        script = [__file__, "--worker", "--out", out, "--depth", str(args.depth)]
        script += ["--width", str(args.width), "--strategy", args.strategy]
        script += ["--repeats", str(args.repeats), "--warmup", str(args.warmup)]
        script += ["--device", args.device, "--ns-dtype", args.ns_dtype]
        if args.profile and world == 2:
            script += ["--profile"]
        if world == 1:
            command = [sys.executable, *script]
        else:
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
            command += ["--nproc-per-node", str(world), *script]
        subprocess.run(command, check=True, capture_output=True, env=_env())
        if args.profile and world == 2:
            args.profile_text = Path(out, "profile.txt").read_text()
        return [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(world)]


def _env() -> dict[str, str]:
    import os

    src = str(Path(__file__).resolve().parents[1] / "src")
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": src}


def measured(args: argparse.Namespace) -> None:
    worlds = [1, 2, 4]
    rounds: dict[int, list[list[dict]]] = {w: [] for w in worlds}
    for index in range(args.rounds):
        for world in worlds:
            rounds[world].append(launch(world, args))
        one = rounds[1][-1][0]["step_s"]
        ratios = ", ".join(
            f"{w} procs {max(r['step_s'] for r in rounds[w][-1]) / one:.3f}x" for w in worlds[1:]
        )  # so far, in case the run is stopped early
        print(f"round {index + 1}/{args.rounds}: slowest rank's step / one process's: {ratios}",
              flush=True)  # fmt: skip
    single_state = rounds[1][0][0]["state_bytes"]
    single_step = statistics.median(r[0]["step_s"] for r in rounds[1])
    config = model_config(args.depth, args.width)
    print(
        f"depth {args.depth}, width {args.width}: {config.num_params() / 1e6:.1f}M parameters, "
        f"{args.strategy}, gloo on CPU, 1 thread per process, Newton-Schulz in {args.ns_dtype}, "
        f"{args.rounds} rounds x {args.repeats} steps (medians)\n"
    )
    print("procs  rank  state MB  state/1proc  step ms  step/1proc  sent MB  recv MB  NS GFLOP")
    for world in worlds:
        for rank in range(world):
            runs = [r[rank] for r in rounds[world]]
            step = statistics.median(r["step_s"] for r in runs)
            last = runs[-1]
            print(
                f"{world:5d}  {rank:4d}  {last['state_bytes'] / 1e6:8.2f}  "
                f"{last['state_bytes'] / single_state:11.3f}  {step * 1e3:7.1f}  "
                f"{step / single_step:10.3f}  {last['sent_bytes'] / 1e6:7.2f}  "
                f"{last['received_bytes'] / 1e6:7.2f}  {last['ns_flops'] / 1e9:8.2f}"
            )
    params = config.num_params() * 4
    print(
        "\nFor scale, FSDP2's own traffic per step and rank (all-gather in forward and backward, "
        "reduce-scatter of gradients): about 3 x (W-1)/W x "
        f"{params / 1e6:.1f} MB = {3 * params / 2e6:.1f} MB at 2 processes, "
        f"{3 * params * 3 / 4e6:.1f} MB at 4.\n"
    )
    print("slowest rank's step / one process's, per interleaved round: median (min-max)")
    for world in worlds[1:]:
        ratios = [
            max(r["step_s"] for r in ranks) / one[0]["step_s"]
            for ranks, one in zip(rounds[world], rounds[1])
        ]
        print(
            f"  {world} processes: {statistics.median(ratios):.3f} "
            f"({min(ratios):.3f}-{max(ratios):.3f}) over {len(ratios)} rounds"
        )
    if getattr(args, "profile_text", None):
        print("\nprofile of three steps on rank 0 of 2 (CPU time by operator):")
        print(args.profile_text)
    for world in worlds[1:]:
        worst_state = max(r["state_bytes"] for r in rounds[world][-1]) / single_state
        worst_step = max(
            statistics.median(r[rank]["step_s"] for r in rounds[world]) for rank in range(world)
        )
        print(
            f"{world} processes: worst rank's state {worst_state:.3f}x of one process "
            f"(goal <= {1.1 / world:.3f}: {'met' if worst_state <= 1.1 / world else 'MISSED'}); "
            f"slowest rank's step {worst_step / single_step:.3f}x"
            + (
                f" (goal <= 0.75: {'met' if worst_step / single_step <= 0.75 else 'MISSED'})"
                if world == 2
                else ""
            )
        )


def per_rank_gb(config: ModelConfig, world: int) -> tuple[float, float, float]:
    """Parameters, gradients and optimizer state per rank (GB, fp32) under FSDP2 with the
    sharded optimizer: momentum for the MuonH matrices, two Adam moments for the embedding, head
    and norm gains (AdamH's head too); per-matrix radii are negligible."""
    total = config.num_params()
    width, depth = config.width, config.depth
    adam = 2 * config.vocab * width + (2 * depth + 1) * width + 2 * depth * config.head_dim
    state = (total - adam) + 2 * adam
    return tuple(4 * count / world / 1e9 for count in (total, total, state))


def analytic(ranks=(8, 16, 32, 64, 128, 256, 512)) -> None:
    print("\nper-rank memory under FSDP2, fp32 (before activations and Newton-Schulz workspace)")
    print("model  params   ranks  params GB  grads GB  state GB  total GB")
    # The paper's family (width 128·depth, head dim 128, vocabulary 32000): d16 has 1.24B
    # parameters, d30 7.45B.
    for label, depth in (("1B", 16), ("7B", 30)):
        config = ModelConfig(depth=depth, head_dim=128, vocab_size=32000, context=4096)
        for world in ranks:
            p, g, s = per_rank_gb(config, world)
            print(
                f"{label:5s}  {config.num_params() / 1e9:5.2f}B  {world:5d}  {p:9.3f}  {g:8.3f}  "
                f"{s:8.3f}  {p + g + s:8.3f}"
            )
    seven_b = ModelConfig(depth=30, head_dim=128, vocab_size=32000, context=4096)
    total = sum(per_rank_gb(seven_b, 64))
    print(
        f"7B on 64 ranks: {total:.2f} GB per rank (goal <= 2 GB: {'met' if total <= 2 else 'MISSED'})"
    )
    largest = 4 * 15360 * 3840 / 1e9
    print(
        "Newton-Schulz workspace (transient, on the owner): its matrices, about 1/ranks of all, "
        f"plus a few copies of the largest (d30's 15360 x 3840 MLP matrix: {largest:.2f} GB)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--strategy", choices=("fsdp", "ddp", "hsdp"), default="fsdp")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (one GPU per rank)")
    parser.add_argument("--ns-dtype", default="fp32", help="Newton-Schulz precision: fp32 or bf16")
    parser.add_argument("--profile", action="store_true", help="profile rank 0 of 2 (last round)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--analytic-only", action="store_true")
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if not args.analytic_only:
        measured(args)
    analytic()


if __name__ == "__main__":
    main()
