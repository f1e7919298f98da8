"""Edge cases of the sharded Newton-Schulz exchange under FSDP2, on one process or torchrun.

A model of a few odd matrices: two of 6 x 8 (on 4 ranks FSDP2 splits their rows 2, 2, 2, 0:
one rank holds none; one exchange carries both), 3 x 8 (1, 1, 1, 0) and 1 x 8 (a single row: one
rank holds it all). ``--only`` keeps
one of them, so that the shard group holds a single matrix and all ranks but its owner own
nothing. Every rank steps MuonH on its shards; rank 0 also steps an unsharded copy in the same
process and writes both results, with each rank's exchanged bytes, to ``--out``: once with
Newton-Schulz in fp32 and once in bf16.
"""

import argparse
import copy
import json
from pathlib import Path

import torch
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from hyperp.optim import MuonH
from hyperp.train.distributed import setup_distributed

SHAPES = {"six": (6, 8), "six_too": (6, 8), "three": (3, 8), "one": (1, 8)}


class Matrices(nn.Module):
    def __init__(self, names: list[str]) -> None:
        super().__init__()
        self.layers = nn.ModuleDict(
            {n: nn.Linear(SHAPES[n][1], SHAPES[n][0], bias=False) for n in names}
        )

    def forward(self, x: torch.Tensor, scale: float) -> torch.Tensor:
        return sum((scale * layer(x)).sin().sum() for layer in self.layers.values())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--only", choices=sorted(SHAPES))
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    env = setup_distributed("cpu")
    for ns_dtype in ("fp32", "bf16"):
        run(args, env, ns_dtype)
    env.barrier()
    env.close()


def run(args, env, ns_dtype: str) -> None:
    torch.manual_seed(0)
    names = [args.only] if args.only else list(SHAPES)
    model = Matrices(names)
    reference = copy.deepcopy(model)
    if env.world_size > 1:
        fully_shard(model, mesh=init_device_mesh("cpu", (env.world_size,)))
    optimizers = [MuonH(m.parameters(), lr=0.05, ns_dtype=ns_dtype) for m in (model, reference)]
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(1))
    sent = []
    for step in range(args.steps):
        for module, optimizer in zip((model, reference), optimizers):
            scale = float(step + 1)  # a different gradient each step
            module(x, scale).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        sent.append(optimizers[0].step_stats.sent_bytes)
    result = {
        "rank": env.rank,
        "sent_bytes": sent,
        "orthogonalized": len(optimizers[0].step_stats.orthogonalized),
        "sharded": {},
        "single": {},
    }
    for name in names:
        weight = model.layers[name].weight.detach()
        full = weight.full_tensor() if isinstance(weight, DTensor) else weight
        result["sharded"][name] = full.tolist()
        result["single"][name] = reference.layers[name].weight.detach().tolist()
    Path(args.out, f"rank{env.rank}-{ns_dtype}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
