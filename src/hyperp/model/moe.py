"""Mixture-of-Experts feed-forward layer (docs/method.md §3.1).

Token-choice routing: a bias-free router ``n -> E`` (a hidden matrix, on a sphere under MuonH),
top-k of the routed logits, softmax over those k only, no capacity limit and no token dropping.
Experts are SwiGLU MLPs stored as banks ``E x out x in`` (one sphere per expert slice). The
expert computation groups tokens by expert so each expert's matmuls run once on its own tokens;
on CUDA with bf16 it uses PyTorch's grouped GEMM, elsewhere one matmul per expert.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from hyperp.model.config import ModelConfig

__all__ = ["MoE", "SwiGLU", "expert_swiglu", "load_balancing_loss"]


class SwiGLU(nn.Module):
    """``down(silu(gate(x)) * up(x))`` without biases; the dense MLP and the shared expert."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.gate = nn.Linear(width, hidden, bias=False)
        self.up = nn.Linear(width, hidden, bias=False)
        self.down = nn.Linear(hidden, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


# Set after the first grouped-GEMM failure so the automatic choice stops trying it.
_GROUPED_GEMM_FAILED: list[bool] = []


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the expert matmuls run in: the autocast dtype when autocast is on."""
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return x.dtype


def _grouped_gemm_usable(x: torch.Tensor, *banks: torch.Tensor) -> bool:
    """PyTorch's grouped GEMM kernel runs on CUDA (sm80+) with bf16 operands whose rows are
    16-byte aligned. (PyTorch also has a CPU version, but it is several times slower than one
    matmul per expert, so CPU uses the loop.)"""
    if getattr(F, "grouped_mm", None) is None or not x.is_cuda or _GROUPED_GEMM_FAILED:
        return False
    if _compute_dtype(x) != torch.bfloat16:
        return False
    if torch.cuda.get_device_capability(x.device) < (8, 0):
        return False
    return all(bank.shape[-1] % 8 == 0 and bank.shape[-2] % 8 == 0 for bank in banks)


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the incoming gradient contiguous: the grouped GEMM's
    backward rejects broadcast (zero-stride) gradients."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous()


def _grouped_linear(x: torch.Tensor, bank: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    # bank is E x out x in; the grouped GEMM computes rows_e @ bank[e].T for each row group.
    out = F.grouped_mm(x, bank.transpose(-2, -1), offs=offsets)
    return _ContiguousGrad.apply(out)


def expert_swiglu(
    x_sorted: torch.Tensor,
    counts: torch.Tensor,
    w_gate: torch.Tensor,
    w_up: torch.Tensor,
    w_down: torch.Tensor,
    *,
    use_grouped_gemm: bool | None = None,
) -> torch.Tensor:
    """SwiGLU of each expert on its own contiguous block of rows of ``x_sorted``.

    ``x_sorted`` holds the routed token copies sorted by expert, ``counts[e]`` rows for expert
    ``e``; banks are ``E x hidden x n`` (gate, up) and ``E x n x hidden`` (down). Each expert's
    three matmuls run once on all its rows: as one grouped GEMM per matrix (CUDA, bf16; no
    host sync) or as one matmul per expert.
    """
    if use_grouped_gemm is None:
        use_grouped_gemm = _grouped_gemm_usable(x_sorted, w_gate, w_up, w_down)
    if use_grouped_gemm:
        dtype = _compute_dtype(x_sorted)
        offsets = torch.cumsum(counts, 0).to(torch.int32)
        xs = x_sorted.to(dtype)
        try:
            gate = _grouped_linear(xs, w_gate.to(dtype), offsets)
            up = _grouped_linear(xs, w_up.to(dtype), offsets)
            return _grouped_linear(F.silu(gate) * up, w_down.to(dtype), offsets)
        except RuntimeError as error:
            # A kernel/layout this PyTorch build does not support: fall back, once, loudly.
            if not _GROUPED_GEMM_FAILED:
                warnings.warn(
                    f"grouped GEMM failed ({error}); using one matmul per expert instead",
                    RuntimeWarning,
                    stacklevel=2,
                )
            _GROUPED_GEMM_FAILED.append(True)
    outputs = []
    # unbind, not bank[e]: indexing would give every expert a full-bank zero gradient to add
    # into (E^2 work in the backward); unbind's backward stacks the slice gradients once.
    banks = zip(w_gate.unbind(0), w_up.unbind(0), w_down.unbind(0))
    for rows, (gate, up, down) in zip(x_sorted.split(counts.tolist(), dim=0), banks):
        if rows.shape[0] == 0:
            continue
        hidden = F.silu(F.linear(rows, gate)) * F.linear(rows, up)
        outputs.append(F.linear(hidden, down))
    if not outputs:
        return x_sorted.new_zeros(0, w_down.shape[1])
    return torch.cat(outputs, dim=0)


def load_balancing_loss(
    probs: torch.Tensor,
    expert_index: torch.Tensor,
    n_experts: int,
    weight: float,
    *,
    global_over_ranks: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Switch-style balancing loss ``weight * E * sum_i f_i * P_i`` (docs/method.md §3.1).

    ``probs``: softmax over all routed logits, tokens x E (fp32). ``expert_index``: the top-k
    choices, tokens x k. ``f_i`` is expert i's share of all top-k assignments and ``P_i`` the
    mean routing probability. With ``global_over_ranks`` and an initialised process group both
    statistics are summed over ranks first; ``P`` through a differentiable all-reduce. Every rank
    then holds the same global loss; the all-reduce's backward sums the identical upstream grads
    (factor = world size), which the data-parallel gradient average divides out again, so the
    parameters receive the gradient of the global loss. Returns ``(loss, expert_counts)``.
    """
    prob_sum = probs.sum(dim=0)
    counts = torch.bincount(expert_index.reshape(-1), minlength=n_experts).to(probs.dtype)
    n_tokens = torch.tensor(float(probs.shape[0]), device=probs.device, dtype=probs.dtype)
    if global_over_ranks and _distributed_world_size() > 1:
        import torch.distributed as dist

        prob_sum = _SumOverRanks.apply(prob_sum)
        counts_and_tokens = torch.cat([counts, n_tokens.reshape(1)])
        dist.all_reduce(counts_and_tokens)
        counts, n_tokens = counts_and_tokens[:-1], counts_and_tokens[-1]
    mean_prob = prob_sum / n_tokens
    assignment_share = counts / counts.sum().clamp_min(1.0)
    loss = weight * n_experts * torch.sum(assignment_share * mean_prob)
    return loss, counts


class _SumOverRanks(torch.autograd.Function):
    """A differentiable all-reduce (sum) over the default group: the backward sums the gradients.

    Nothing is kept on the context, so a finished graph holds no reference to the process group.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        total = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        total = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total)
        return total


def _distributed_world_size() -> int:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


class MoE(nn.Module):
    """Routed SwiGLU experts with optional shared expert and SqrtGate (docs/method.md §3.1).

    ``forward`` returns ``(output, balancing_loss)``.
    """

    def __init__(self, config: ModelConfig, layer_index: int = 0) -> None:
        super().__init__()
        if not config.is_moe:
            raise ValueError("MoE needs model.moe_sparsity >= 1")
        self.layer_index = layer_index
        self.width = config.width
        self.hidden = config.expert_hidden
        self.n_routed = config.n_routed_experts
        self.top_k = config.experts_per_token
        self.sqrt_gate = config.moe_sqrt_gate
        self.balance_weight = config.moe_balance_weight
        self.global_balance = config.moe_global_balance
        self.router = nn.Linear(config.width, self.n_routed, bias=False)
        self.w_gate = nn.Parameter(torch.empty(self.n_routed, self.hidden, config.width))
        self.w_up = nn.Parameter(torch.empty(self.n_routed, self.hidden, config.width))
        self.w_down = nn.Parameter(torch.empty(self.n_routed, config.width, self.hidden))
        self.shared = SwiGLU(config.width, self.hidden) if config.moe_shared_expert else None
        self._hyperp_monitor = None  # set by hyperp.monitor.collect on logging steps only
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        # docs/method.md §2.3: every expert slice U(-1/sqrt(fan_in), 1/sqrt(fan_in)), one sphere each.
        for bank in (self.w_gate, self.w_up, self.w_down):
            bound = 1.0 / math.sqrt(bank.shape[-1])
            bank.uniform_(-bound, bound)
        _uniform_fan_in(self.router.weight)
        if self.shared is not None:
            for linear in (self.shared.gate, self.shared.up, self.shared.down):
                _uniform_fan_in(linear.weight)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = x.shape
        tokens = x.reshape(-1, self.width)
        # Router statistics in fp32 (docs/method.md §3.1), whatever the autocast dtype.
        with torch.autocast(tokens.device.type, enabled=False):
            logits = F.linear(tokens.float(), self.router.weight.float())
        top_logits, expert_index = torch.topk(logits, self.top_k, dim=-1)
        gates = torch.softmax(top_logits, dim=-1)
        # SqrtGate: weights sqrt(g_i) keep the output RMS independent of k (sum g_i = 1).
        combine = gates.sqrt() if self.sqrt_gate else gates

        # Group the token copies by expert: a stable sort of the flat assignment list.
        flat_expert = expert_index.reshape(-1)
        order = torch.argsort(flat_expert, stable=True)
        token_of_row = order // self.top_k
        counts = torch.bincount(flat_expert, minlength=self.n_routed)
        # Gather in the matmul dtype (bf16 under autocast): half the bytes of an fp32 gather.
        expert_in = tokens.to(_compute_dtype(tokens))[token_of_row]
        expert_out = expert_swiglu(expert_in, counts, self.w_gate, self.w_up, self.w_down)
        # Combine in fp32: a token's k weighted expert outputs are summed without bf16 rounding.
        weighted = expert_out.float() * combine.reshape(-1)[order].unsqueeze(-1)
        routed = torch.zeros_like(tokens, dtype=torch.float32).index_add_(0, token_of_row, weighted)

        if self.shared is not None:
            shared = self.shared(tokens)
            if self.sqrt_gate:
                out = math.sqrt(0.5) * routed + math.sqrt(0.5) * shared.float()
            else:
                out = routed + shared.float()
        else:
            out = routed

        probs = torch.softmax(logits, dim=-1)
        aux, global_counts = load_balancing_loss(
            probs,
            expert_index,
            self.n_routed,
            self.balance_weight,
            global_over_ranks=self.global_balance,
        )
        if self._hyperp_monitor is not None:
            self._hyperp_monitor.record_router(self.layer_index, logits, global_counts)
        return out.reshape(shape), aux


@torch.no_grad()
def _uniform_fan_in(weight: torch.Tensor) -> None:
    bound = 1.0 / math.sqrt(weight.shape[-1])
    weight.uniform_(-bound, bound)
