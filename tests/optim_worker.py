"""One optimizer run of a small paper-family model, on one process or under torchrun.

Run by tests/test_distributed_optim.py, for a dense and an MoE model in turn. Every rank writes
``<model>-rank<r>.json`` into ``--out`` (its losses, optimizer-state bytes, the matrices it
orthogonalized, its Newton-Schulz FLOPs and bytes exchanged) and rank 0 writes
``<model>-weights.pt`` (the final weights, gathered whole for comparison).
"""

import argparse
import copy
import json
from pathlib import Path

import torch
from torch.distributed.tensor import DTensor

from hyperp.model import ModelConfig, Transformer
from hyperp.optim import build_optimizer
from hyperp.optim.roles import role_map
from hyperp.optim.sharding import MatrixLayout, ns_flops
from hyperp.train.distributed import parallelize, setup_distributed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--strategy", default="fsdp")
    parser.add_argument("--shard-size", type=int, default=0)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ns-dtype", default=None, help="fp32 or bf16 (default: the machine's)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    dist = setup_distributed("cpu")
    for kind in ("dense", "moe"):
        run(args, dist, kind)
    dist.barrier()
    dist.close()


def run(args, dist, kind: str) -> None:
    moe = kind == "moe"
    config = ModelConfig(
        depth=2, width=64, head_dim=16, n_kv_heads=2, vocab_size=96, context=16,
        moe_sparsity=2 if moe else 0, moe_granularity=2,  # 4 experts, 2 per shard
    )  # fmt: skip
    torch.manual_seed(args.seed)
    model = Transformer(config)
    roles = role_map(model)
    # What one process would hold: the same optimizer over an unsharded copy.
    options = {"lr": 0.02, "ns_dtype": args.ns_dtype}
    single_bytes = build_optimizer(copy.deepcopy(model), "hyperp", **options).state_bytes()
    parallel = parallelize(model, dist, args.strategy, args.shard_size)
    optimizer = build_optimizer(
        model, "hyperp", **options, roles=roles, replicate_group=parallel.replicate_group
    )
    names = {
        id(p): n for g in optimizer.param_groups for p, n in zip(g["params"], g["param_names"])
    }
    generator = torch.Generator().manual_seed(args.seed + 1)
    losses, steps = [], []
    per_rank = 8 // dist.world_size
    for _ in range(args.steps):
        tokens = torch.randint(0, config.vocab_size, (8, 17), generator=generator)
        mine = tokens[dist.rank * per_rank : (dist.rank + 1) * per_rank]
        out = parallel.module(mine[:, :-1], mine[:, 1:])
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(dist.sum([out.loss.item()])[0] / dist.world_size)
        stats = optimizer.step_stats
        steps.append(
            {
                "orthogonalized": [
                    [names[id(optimizer.param_groups[g]["params"][i])], j]
                    for g, i, j in stats.orthogonalized
                ],
                "ns_flops": stats.ns_flops,
                "sent_bytes": stats.sent_bytes,
                "received_bytes": stats.received_bytes,
            }
        )
    out_dir = Path(args.out)
    report = {
        "rank": dist.rank,
        "world_size": dist.world_size,
        "losses": losses,
        "state_bytes": optimizer.state_bytes(),
        "single_state_bytes": single_bytes,
        "largest_matrix_flops": max(
            ns_flops(layout.rows, layout.cols, group["ns_steps"])
            for group in optimizer.param_groups
            if group["algorithm"] == "muonh"
            for layout in (MatrixLayout.of(p.shape, group["layout"], 1) for p in group["params"])
        ),
        "steps": steps,
        "radii": {
            names[id(p)]: optimizer.radius(p).tolist()
            for g in optimizer.param_groups
            for p in g["params"]
            if "radius" in optimizer.state[p]
        },
    }
    (out_dir / f"{kind}-rank{dist.rank}.json").write_text(json.dumps(report))
    weights = {}
    for name, tensor in model.state_dict().items():
        weights[name] = tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
    if dist.is_main:
        weights = {k: v.detach().clone() for k, v in weights.items()}
        torch.save(weights, out_dir / f"{kind}-weights.pt")


if __name__ == "__main__":
    main()
