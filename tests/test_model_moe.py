"""MoE layer (docs/method.md §3.1): routing, SqrtGate, shared expert, balancing loss (local and global)."""

from __future__ import annotations

import math
import os
import socket
import sys
import tempfile

import pytest
import torch
import torch.nn.functional as F

from hyperp.model import ModelConfig, MoE, SwiGLU, load_balancing_loss
from hyperp.model.moe import expert_swiglu


def moe_config(**overrides) -> ModelConfig:
    values = dict(depth=2, width=32, head_dim=8, n_kv_heads=2, vocab_size=64, context=16)
    values.update(overrides)
    return ModelConfig(**values)


def per_token_reference(moe: MoE, x: torch.Tensor) -> torch.Tensor:
    """The MoE output computed token by token, expert by expert (slow, obviously right)."""
    tokens = x.reshape(-1, moe.width)
    out = torch.zeros_like(tokens)
    for t, token in enumerate(tokens):
        logits = moe.router.weight @ token
        top, index = torch.topk(logits, moe.top_k)
        gates = torch.softmax(top, dim=-1)
        for gate, e in zip(gates, index.tolist()):
            hidden = F.silu(moe.w_gate[e] @ token) * (moe.w_up[e] @ token)
            weight = gate.sqrt() if moe.sqrt_gate else gate
            out[t] += weight * (moe.w_down[e] @ hidden)
        if moe.shared is not None:
            shared = moe.shared(token)
            out[t] = math.sqrt(0.5) * (out[t] + shared) if moe.sqrt_gate else out[t] + shared
    return out.reshape(x.shape)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(moe_sparsity=2, moe_granularity=4),
        dict(moe_sparsity=2, moe_granularity=4, moe_sqrt_gate=False),
        dict(moe_sparsity=2, moe_granularity=4, moe_shared_expert=True),
        dict(moe_sparsity=3, moe_granularity=2, moe_shared_expert=True, moe_sqrt_gate=False),
    ],
)
def test_grouped_expert_computation_equals_per_token_reference(overrides):
    torch.manual_seed(0)
    moe = MoE(moe_config(**overrides))
    x = torch.randn(3, 7, 32)
    with torch.no_grad():
        out, _ = moe(x)
        expected = per_token_reference(moe, x)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-6)


def test_one_expert_with_gate_one_equals_dense_swiglu():
    torch.manual_seed(0)
    config = moe_config(moe_sparsity=1, moe_granularity=1)
    moe = MoE(config)
    dense = SwiGLU(config.width, config.mlp_hidden)
    assert moe.w_gate.shape[1] == config.mlp_hidden  # hidden 4n/k with k = 1
    with torch.no_grad():
        dense.gate.weight.copy_(moe.w_gate[0])
        dense.up.weight.copy_(moe.w_up[0])
        dense.down.weight.copy_(moe.w_down[0])
        x = torch.randn(2, 5, 32)
        out, aux = moe(x)
    torch.testing.assert_close(out, dense(x), rtol=1e-5, atol=1e-6)
    # One expert is perfectly balanced: the loss is exactly gamma.
    assert aux.item() == pytest.approx(config.moe_balance_weight)


def normalised_moe(k: int, sqrt_gate: bool, x: torch.Tensor) -> MoE:
    """A MoE with 2k experts, uniform gates (zero router) and every expert's output of unit
    RMS on ``x`` (independent random experts)."""
    width = x.shape[-1]
    config = moe_config(
        width=width, head_dim=8, moe_sparsity=2, moe_granularity=k, moe_sqrt_gate=sqrt_gate
    )
    moe = MoE(config)
    with torch.no_grad():
        moe.router.weight.zero_()  # equal logits: gates 1/k for every chosen expert
        all_rows = torch.tensor([x.shape[0]])
        for e in range(moe.n_routed):
            bank = slice(e, e + 1)
            single = expert_swiglu(x, all_rows, moe.w_gate[bank], moe.w_up[bank], moe.w_down[bank])
            moe.w_down[e] /= single.pow(2).mean().sqrt()
    return moe


@pytest.mark.parametrize("k", [1, 2, 4, 8])
def test_sqrt_gate_keeps_output_rms_independent_of_k(k):
    torch.manual_seed(k)
    x = torch.randn(512, 256)
    with torch.no_grad():
        rms_sqrt = normalised_moe(k, True, x)(x)[0].pow(2).mean().sqrt().item()
        torch.manual_seed(k)
        rms_plain = normalised_moe(k, False, x)(x)[0].pow(2).mean().sqrt().item()
    # Independent unit-RMS experts: sum sqrt(g_i) y_i has RMS sqrt(sum g_i) = 1, while
    # sum g_i y_i has RMS sqrt(sum g_i^2) = 1/sqrt(k). The tolerance covers the small
    # correlation between random experts at width 256.
    assert rms_sqrt == pytest.approx(1.0, rel=0.1)
    assert rms_plain == pytest.approx(1 / math.sqrt(k), rel=0.1)


def test_balancing_loss_is_gamma_at_perfect_balance_and_more_otherwise():
    experts, tokens, gamma = 4, 8, 0.1  # top-2 assignments below
    uniform = torch.full((tokens, experts), 1 / experts)
    balanced = torch.tensor([[0, 1], [2, 3]] * (tokens // 2))
    loss, counts = load_balancing_loss(uniform, balanced, experts, gamma)
    assert loss.item() == pytest.approx(gamma)
    assert counts.tolist() == [4, 4, 4, 4]
    # All mass and all assignments on experts 0 and 1: f = P = (1/2, 1/2, 0, 0) -> gamma * 4 / 2.
    skewed_probs = torch.tensor([[0.5, 0.5, 0.0, 0.0]]).expand(tokens, experts)
    skewed = torch.tensor([[0, 1]] * tokens)
    loss, _ = load_balancing_loss(skewed_probs, skewed, experts, gamma)
    assert loss.item() == pytest.approx(2 * gamma)
    # Hand value for a mixed case: f = (3, 1, 0, 0)/4 and P = (0.4, 0.3, 0.2, 0.1).
    probs = torch.tensor([[0.4, 0.3, 0.2, 0.1]] * 2)
    loss, _ = load_balancing_loss(probs, torch.tensor([[0, 1], [0, 0]]), experts, gamma)
    assert loss.item() == pytest.approx(gamma * 4 * (0.75 * 0.4 + 0.25 * 0.3))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


_WORKER = r"""
import sys, torch, torch.distributed as dist
from hyperp.model import load_balancing_loss
rank, world, port, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
torch.manual_seed(0)
logits = torch.randn(10, 6) * 2  # the same full batch on every rank; each takes its half
sizes = [6, 4]  # unequal shares: the global mean must weight ranks by their token counts
local = logits.split(sizes)[rank].clone().requires_grad_(True)
probs = torch.softmax(local, -1)
index = torch.topk(local, 2, -1).indices
loss, counts = load_balancing_loss(probs, index, 6, 0.1, global_over_ranks=True)
loss.backward()
torch.save({"loss": loss.detach(), "counts": counts, "grad": local.grad}, path)
del loss, probs, local  # the graph and its tensors go before the group does
dist.barrier()  # both ranks done communicating before gloo tears down its connections
dist.destroy_process_group()
"""


@pytest.mark.distributed
def test_global_balancing_loss_on_two_gloo_processes_equals_concatenated_batch():
    import subprocess

    src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        script = os.path.join(tmp, "worker.py")
        with open(script, "w") as f:
            f.write(_WORKER)
        env = {**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": "1"}
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    script,
                    str(rank),
                    "2",
                    str(port),
                    os.path.join(tmp, f"{rank}.pt"),
                ],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            for rank in range(2)
        ]
        for proc in procs:
            output, _ = proc.communicate(timeout=120)
            assert proc.returncode == 0, output.decode()
        results = [torch.load(os.path.join(tmp, f"{rank}.pt")) for rank in range(2)]

    torch.manual_seed(0)
    logits = (torch.randn(10, 6) * 2).requires_grad_(True)
    index = torch.topk(logits, 2, -1).indices
    expected, counts = load_balancing_loss(torch.softmax(logits, -1), index, 6, 0.1)
    expected.backward()
    for result in results:
        torch.testing.assert_close(result["loss"], expected.detach())
        torch.testing.assert_close(result["counts"], counts)
    # Each rank's gradient is world_size times its slice of the global gradient, which the
    # data-parallel average (divide by world size) turns into the exact global gradient.
    local_grads = torch.cat([result["grad"] for result in results]) / 2
    torch.testing.assert_close(local_grads, logits.grad)


def test_moe_without_process_group_uses_the_local_batch():
    torch.manual_seed(0)
    moe = MoE(moe_config(moe_sparsity=2, moe_granularity=2))
    _, aux = moe(torch.randn(2, 4, 32))
    assert aux.item() >= 0.1 - 1e-6


def test_grouped_gemm_path_matches_the_per_expert_loop_forward_and_backward():
    # PyTorch's grouped GEMM also runs (slowly) on CPU in fp32, so the CUDA code path's
    # indexing and gradients are checked here too; empty experts included.
    if getattr(F, "grouped_mm", None) is None:
        pytest.skip("this PyTorch has no grouped GEMM")
    torch.manual_seed(0)
    experts, width, hidden = 5, 16, 24
    counts = torch.tensor([3, 0, 7, 1, 0])
    inputs = [
        torch.randn(int(counts.sum()), width),
        torch.randn(experts, hidden, width) / 4,
        torch.randn(experts, hidden, width) / 4,
        torch.randn(experts, width, hidden) / 5,
    ]
    results = []
    for grouped in (True, False):
        leaves = [t.clone().requires_grad_(True) for t in inputs]
        out = expert_swiglu(leaves[0], counts, *leaves[1:], use_grouped_gemm=grouped)
        out.sum().backward()  # a broadcast gradient, which the grouped GEMM needs made dense
        results.append([out.detach()] + [leaf.grad for leaf in leaves])
    for grouped_value, loop_value in zip(*results):
        torch.testing.assert_close(grouped_value, loop_value, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="grouped GEMM runs on CUDA only")
def test_grouped_gemm_path_matches_the_loop_on_cuda():
    torch.manual_seed(0)
    device = torch.device("cuda")
    experts, width, hidden = 8, 64, 128
    banks = [
        torch.randn(experts, hidden, width, device=device) / 8,
        torch.randn(experts, hidden, width, device=device) / 8,
        torch.randn(experts, width, hidden, device=device) / 11,
    ]
    counts = torch.tensor([5, 0, 17, 3, 40, 1, 0, 30], device=device)
    x = torch.randn(int(counts.sum()), width, device=device)
    bf16 = [bank.bfloat16() for bank in banks]
    grouped = expert_swiglu(x.bfloat16(), counts, *bf16, use_grouped_gemm=True)
    loop = expert_swiglu(x.bfloat16(), counts, *bf16, use_grouped_gemm=False)
    torch.testing.assert_close(grouped.float(), loop.float(), rtol=2e-2, atol=2e-2)


def test_router_runs_in_fp32_under_bf16_autocast():
    import hyperp.monitor

    torch.manual_seed(0)
    moe = MoE(moe_config(moe_sparsity=2, moe_granularity=2))
    seen = {}

    class Spy(hyperp.monitor.StabilityStats):
        def record_router(self, layer, logits, expert_counts):
            seen["dtype"] = logits.dtype
            super().record_router(layer, logits, expert_counts)

    moe._hyperp_monitor = Spy()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, aux = moe(torch.randn(2, 4, 32))
    assert seen["dtype"] == torch.float32
    assert aux.dtype == torch.float32 and out.dtype == torch.float32


def test_grouped_gemm_failure_falls_back_to_the_loop(monkeypatch):
    import hyperp.model.moe as moe_module

    def unsupported(*args, **kwargs):
        raise RuntimeError("layout not supported")

    monkeypatch.setattr(moe_module, "_GROUPED_GEMM_FAILED", [])
    monkeypatch.setattr(F, "grouped_mm", unsupported, raising=False)
    torch.manual_seed(0)
    counts = torch.tensor([2, 3])
    x, banks = torch.randn(5, 8), [torch.randn(2, 4, 8), torch.randn(2, 4, 8), torch.randn(2, 8, 4)]
    with pytest.warns(RuntimeWarning, match="one matmul per expert"):
        out = expert_swiglu(x, counts, *banks, use_grouped_gemm=True)
    torch.testing.assert_close(out, expert_swiglu(x, counts, *banks, use_grouped_gemm=False))
    assert moe_module._GROUPED_GEMM_FAILED  # the automatic choice will not try it again
