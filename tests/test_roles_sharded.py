"""Roles by name survive FSDP2: a model sharded before build_optimizer gets the same roles,
layouts and transpositions as unsharded, and steps the same (2 gloo ranks)."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from training import OPTIMIZER_SPREAD

_WORKER = r"""
import copy, sys, torch, torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import fully_shard
from hyperp.model import ModelConfig, Transformer
from hyperp.optim import build_optimizer, param_groups, role_map, set_role

rank, port, atol = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
torch.set_num_threads(1)


class Mixer(nn.Module):
    # A user's model whose layouts only set_role states: w is stored in x out (used as x @ w),
    # kernel is one 24 x 24 matrix stored as 24 x 4 x 6 (structure alone would read 24 4x6 banks).
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(32, 16)
        self.w = nn.Parameter(torch.randn(16, 24) / 4)
        self.kernel = nn.Parameter(torch.randn(24, 4, 6) / 5)
        self.out = nn.Linear(24, 32, bias=False)
        set_role(self.w, "matrix", transposed=True)
        set_role(self.kernel, "matrix", layout="flatten")

    def forward(self, tokens):
        h = torch.tanh(self.embed(tokens) @ self.w)
        return self.out(torch.tanh(h @ self.kernel.flatten(1).T))

    def get_output_embeddings(self):
        return self.out


def table(model, **kw):
    return [(g["role"], g["layout"], g["transposed"], g["param_names"])
            for g in param_groups(model, **kw)]


def full(param):
    return param.full_tensor() if hasattr(param, "full_tensor") else param


torch.manual_seed(0)
mixer = Mixer()
torch.manual_seed(0)
reference = Mixer()  # (a deepcopy would drop set_role's attributes too)
assert table(reference)[0][:3] == ("matrix", "batch", True), table(reference)
roles = role_map(mixer)  # plain data, taken before sharding
fully_shard(mixer)
assert hasattr(mixer.w, "placements")  # a DTensor now
# fully_shard replaced the tensors and dropped what set_role attached ...
assert table(mixer) != table(reference), table(mixer)
# ... and the mapping by name brings every role, layout and transposition back.
assert table(mixer, roles=roles) == table(reference), (table(mixer, roles=roles), table(reference))

# One Muon-baseline step (its sqrt(fan_out/fan_in) reads 'transposed') equals the unsharded one.
sharded_opt = build_optimizer(mixer, "muon", lr=0.02, roles=roles, ns_dtype="fp32")
plain_opt = build_optimizer(reference, "muon", lr=0.02, ns_dtype="fp32")
tokens = torch.randint(0, 32, (4, 8), generator=torch.Generator().manual_seed(1))
for model, opt in ((mixer, sharded_opt), (reference, plain_opt)):
    model(tokens).square().mean().backward()
    opt.step()
for (name, a), (_, b) in zip(mixer.named_parameters(), reference.named_parameters()):
    torch.testing.assert_close(full(a).detach(), b.detach(), rtol=0, atol=atol, msg=name)

# The project's own model names its roles: sharded per block, it needs no mapping at all.
config = ModelConfig(depth=2, width=32, head_dim=16, n_kv_heads=1, vocab_size=64, context=8,
                     moe_sparsity=2, moe_granularity=2)
model = Transformer(config)
unsharded = copy.deepcopy(model)
for block in model.blocks:
    fully_shard(block)
fully_shard(model)
assert table(model) == table(unsharded)
assert {g["layout"] for g in param_groups(model) if g["role"] == "matrix"} == {"batch"}
dist.barrier()
dist.destroy_process_group()
print("ok", rank)
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.distributed
def test_roles_by_name_survive_fsdp2_sharding_before_build_optimizer(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    src = Path(__file__).resolve().parents[1] / "src"
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    port = str(_free_port())
    atol = str(OPTIMIZER_SPREAD.weights)
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(rank), port, atol],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for rank in range(2)
    ]
    for proc in procs:
        output, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, output.decode()[-3000:]
