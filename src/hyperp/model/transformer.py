"""The paper's pre-norm decoder transformer, dense or MoE (METHOD.md section 3).

RMSNorm with gains, RoPE on the full head, grouped-query attention with optional QK-norm and
per-head output gates, SwiGLU MLP (or MoE), untied embedding and head, no biases, Depth-muP
branch multiplier ``1/sqrt(2L)``. The residual stream is kept in fp32. Every parameter carries
its optimizer role (``hyperp.optim.roles``), so ``build_optimizer`` needs no guessing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hyperp.model.config import ModelConfig
from hyperp.model.moe import MoE, SwiGLU
from hyperp.optim.roles import Role, set_role

__all__ = ["Attention", "Block", "ModelOutput", "RMSNorm", "Transformer", "apply_rope"]


@dataclass
class ModelOutput:
    """What :meth:`Transformer.forward` returns.

    ``loss = lm_loss + aux_loss`` when targets are given (else ``loss`` and ``lm_loss`` are
    None); ``aux_loss`` is the sum over MoE layers of the balancing loss, a zero tensor for dense.
    """

    logits: torch.Tensor
    loss: torch.Tensor | None
    lm_loss: torch.Tensor | None
    aux_loss: torch.Tensor


class RMSNorm(nn.Module):
    """``x / rms(x) * gain``, computed in fp32; the gain is a ``vector`` parameter."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size))
        set_role(self.weight, Role.VECTOR)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), self.eps).to(x.dtype)

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)


def rope_tables(head_dim: int, context: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables ``context x head_dim`` for the half-split RoPE convention."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(context, dtype=torch.float64), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (..., T, head_dim) by position; pairs are (i, i + head_dim/2). Computed in
    fp32 (bf16 angles would blur distant positions), returned in ``x``'s dtype."""
    dtype = x.dtype
    x = x.float()
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos + rotated * sin).to(dtype)


class Attention(nn.Module):
    """Causal grouped-query attention with optional QK-norm and gated heads (METHOD.md 3)."""

    def __init__(self, config: ModelConfig, layer_index: int = 0) -> None:
        super().__init__()
        self.layer_index = layer_index
        self.n_heads = config.n_heads
        self.n_kv_heads = config.n_kv_heads
        self.head_dim = config.head_dim
        self.softmax_scale = config.softmax_scale
        n = config.width
        self.q = nn.Linear(n, config.attention_width, bias=False)
        self.k = nn.Linear(n, config.kv_width, bias=False)
        self.v = nn.Linear(n, config.kv_width, bias=False)
        self.o = nn.Linear(config.attention_width, n, bias=False)
        # One gate scalar per head per token, from the block's normalized input.
        self.gate = nn.Linear(n, config.n_heads, bias=False) if config.gated_attention else None
        # QK-norm: one gain of length head_dim for q and one for k, shared across heads.
        self.q_norm = RMSNorm(config.head_dim, config.norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(config.head_dim, config.norm_eps) if config.qk_norm else None
        for linear in (self.q, self.k, self.v, self.o, self.gate):
            if linear is not None:
                set_role(linear.weight, Role.MATRIX)
        self._hyperp_monitor = None  # set by hyperp.monitor.collect on logging steps only

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        q = self.q(x).view(batch, length, self.n_heads, self.head_dim)
        k = self.k(x).view(batch, length, self.n_kv_heads, self.head_dim)
        v = self.v(x).view(batch, length, self.n_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)  # before RoPE (METHOD.md 3)
        q = apply_rope(q.transpose(1, 2), cos, sin)
        k = apply_rope(k.transpose(1, 2), cos, sin)
        v = v.transpose(1, 2)
        if self._hyperp_monitor is not None:
            self._hyperp_monitor.record_attention(self.layer_index, q, k, self.softmax_scale)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            is_causal=True,
            scale=self.softmax_scale,
            enable_gqa=self.n_heads != self.n_kv_heads,
        )
        y = y.transpose(1, 2)  # batch x length x heads x head_dim
        if self.gate is not None:
            y = y * torch.sigmoid(self.gate(x)).unsqueeze(-1).to(y.dtype)
        return self.o(y.reshape(batch, length, self.n_heads * self.head_dim))


class Block(nn.Module):
    """Pre-norm block: ``x + m*attn(norm(x))``, then ``x + m*mlp(norm(x))``, ``m = 1/sqrt(2L)``.

    ``forward`` returns ``(x, balancing_loss)``; the loss is None for a dense MLP.
    """

    def __init__(self, config: ModelConfig, layer_index: int) -> None:
        super().__init__()
        self.layer_index = layer_index
        self.residual_multiplier = config.residual_multiplier
        self.attn_norm = RMSNorm(config.width, config.norm_eps)
        self.attn = Attention(config, layer_index)
        self.mlp_norm = RMSNorm(config.width, config.norm_eps)
        self.mlp: nn.Module = (
            MoE(config, layer_index) if config.is_moe else SwiGLU(config.width, config.mlp_hidden)
        )
        self._hyperp_monitor = None  # set by hyperp.monitor.collect on logging steps only

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        attn_out = self.attn(self.attn_norm(x), cos, sin) * self.residual_multiplier
        x = x + attn_out.float()
        mlp_out = self.mlp(self.mlp_norm(x))
        aux = None
        if isinstance(mlp_out, tuple):
            mlp_out, aux = mlp_out
        mlp_out = mlp_out * self.residual_multiplier
        x = x + mlp_out.float()
        if self._hyperp_monitor is not None:
            self._hyperp_monitor.record_block(self.layer_index, attn_out, mlp_out, x)
        return x, aux


class Transformer(nn.Module):
    """The paper's decoder-only language model (METHOD.md 3), dense or MoE."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab, config.width)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.depth))
        self.final_norm = RMSNorm(config.width, config.norm_eps)
        self.head = nn.Linear(config.width, config.vocab, bias=False)
        set_role(self.embedding.weight, Role.EMBEDDING)
        set_role(self.head.weight, Role.HEAD)
        cos, sin = rope_tables(config.head_dim, config.context, config.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Initialization of METHOD.md 2.3, 2.4 and 3; it fixes the sphere radii.

        Hidden matrices and expert slices U(-1/sqrt(fan_in), 1/sqrt(fan_in)); head
        N(0, head_std^2); embedding N(0, embedding_init_std^2); norm gains 1.
        """
        for module in self.modules():
            if isinstance(module, RMSNorm | MoE):
                module.reset_parameters()
            elif isinstance(module, nn.Linear) and module is not self.head:
                bound = 1.0 / math.sqrt(module.weight.shape[1])
                module.weight.uniform_(-bound, bound)
        self.head.weight.normal_(0.0, self.config.head_std)
        self.embedding.weight.normal_(0.0, self.config.embedding_init_std)
        cos, sin = rope_tables(self.config.head_dim, self.config.context, self.config.rope_base)
        self.rope_cos.copy_(cos)
        self.rope_sin.copy_(sin)

    def get_output_embeddings(self) -> nn.Linear:
        return self.head

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embedding

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor | None = None) -> ModelOutput:
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be batch x length, got shape {tuple(tokens.shape)}")
        length = tokens.shape[1]
        if length > self.config.context:
            raise ValueError(
                f"sequence length {length} exceeds model.context = {self.config.context}; "
                "shorten the sequences or raise model.context"
            )
        cos, sin = self.rope_cos[:length], self.rope_sin[:length]
        x = self.embedding(tokens).float()
        aux_loss = x.new_zeros(())
        for block in self.blocks:
            x, block_aux = block(x, cos, sin)
            if block_aux is not None:
                aux_loss = aux_loss + block_aux
        logits = self.head(self.final_norm(x))
        if self.config.output_multiplier != 1.0:
            logits = logits * self.config.output_multiplier
        if targets is None:
            return ModelOutput(logits=logits, loss=None, lm_loss=None, aux_loss=aux_loss)
        lm_loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        return ModelOutput(
            logits=logits, loss=lm_loss + aux_loss, lm_loss=lm_loss, aux_loss=aux_loss
        )

    def num_params(self) -> int:
        """Trainable parameters actually allocated (compare ``config.num_params()``)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
