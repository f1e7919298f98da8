"""The paper's pre-norm decoder transformer, dense or MoE (docs/method.md §3).

RMSNorm with gains, RoPE on the full head, grouped-query attention with optional QK-norm and
per-head output gates, SwiGLU MLP (or MoE), untied embedding and head, no biases, Depth-muP
branch multiplier ``1/sqrt(2L)``. The residual stream is kept in fp32. The model names every
parameter's optimizer role (:meth:`Transformer.parameter_roles`), so ``build_optimizer`` needs no
guessing, before or after sharding.

Incremental decoding: ``forward(tokens, cache=KVCache(...))`` runs only the new tokens against the
keys and values cached so far (RoPE positions continue from the cache's length), and
:meth:`Transformer.generate` / :meth:`Transformer.stream` sample with it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from hyperp.model.config import ModelConfig
from hyperp.model.moe import MoE, SwiGLU
from hyperp.roles import ParamRole, Role

__all__ = [
    "Attention",
    "Block",
    "KVCache",
    "ModelOutput",
    "RMSNorm",
    "Transformer",
    "apply_rope",
    "checkpoint_blocks",
    "sample_next_token",
]


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

    @classmethod
    def from_logits(
        cls, logits: torch.Tensor, targets: torch.Tensor | None, aux_loss: torch.Tensor
    ) -> ModelOutput:
        """The training loss: mean next-token cross-entropy in fp32, plus ``aux_loss``."""
        if targets is None:
            return cls(logits=logits, loss=None, lm_loss=None, aux_loss=aux_loss)
        lm_loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        return cls(logits=logits, loss=lm_loss + aux_loss, lm_loss=lm_loss, aux_loss=aux_loss)


class RMSNorm(nn.Module):
    """``x / rms(x) * gain``, computed in fp32; the gain is a ``vector`` parameter."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size))

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


class KVCache:
    """The keys and values of every attention layer for a batch of sequences being decoded.

    One buffer per layer, ``batch x kv_heads x capacity x head_dim``, allocated on first use in
    the dtype of the keys (bf16 under autocast) and filled up to ``length``. The model advances
    ``length`` after each forward; RoPE positions of new tokens start at ``length``.
    """

    def __init__(self, depth: int, capacity: int) -> None:
        self.capacity = capacity
        self.length = 0
        self.keys: list[torch.Tensor | None] = [None] * depth
        self.values: list[torch.Tensor | None] = [None] * depth

    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this layer's new keys and values; return all of them so far."""
        end = self.length + k.shape[2]
        if self.keys[layer] is None:
            shape = (k.shape[0], k.shape[1], self.capacity, k.shape[3])
            self.keys[layer], self.values[layer] = k.new_empty(shape), v.new_empty(shape)
        keys, values = self.keys[layer], self.values[layer]
        keys[:, :, self.length : end] = k
        values[:, :, self.length : end] = v
        return keys[:, :, :end], values[:, :, :end]


def _cached_causal_mask(new: int, total: int, device: torch.device) -> torch.Tensor | None:
    """Causal mask of ``new`` queries that follow ``total - new`` cached positions (None when
    one query may see everything)."""
    if new == 1:
        return None
    return torch.ones(new, total, dtype=torch.bool, device=device).tril(diagonal=total - new)


class Attention(nn.Module):
    """Causal grouped-query attention with optional QK-norm and gated heads (docs/method.md §3)."""

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
        self._hyperp_monitor = None  # set by hyperp.monitor.collect on logging steps only

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        batch, length, _ = x.shape
        q = self.q(x).view(batch, length, self.n_heads, self.head_dim)
        k = self.k(x).view(batch, length, self.n_kv_heads, self.head_dim)
        v = self.v(x).view(batch, length, self.n_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)  # before RoPE (docs/method.md §3)
        q = apply_rope(q.transpose(1, 2), cos, sin)
        k = apply_rope(k.transpose(1, 2), cos, sin)
        v = v.transpose(1, 2)
        if self._hyperp_monitor is not None:
            self._hyperp_monitor.record_attention(self.layer_index, q, k, self.softmax_scale)
        mask = None
        if cache is not None:
            k, v = cache.update(self.layer_index, k, v)
            if k.shape[2] > length:  # queries after cached positions: a bottom-right mask
                mask = _cached_causal_mask(length, k.shape[2], x.device)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            is_causal=k.shape[2] == length,
            scale=self.softmax_scale,
            enable_gqa=self.n_heads != self.n_kv_heads,
        )
        y = y.transpose(1, 2)  # batch x length x heads x head_dim
        if self.gate is not None:
            y = y * torch.sigmoid(self.gate(x)).unsqueeze(-1).to(y.dtype)
        return self.o(y.reshape(batch, length, self.n_heads * self.head_dim))


class Block(nn.Module):
    """Pre-norm block: ``x + m*attn(norm(x))``, then ``x + m*mlp(norm(x))``, ``m = 1/sqrt(2L)``.

    ``forward`` returns ``(x, balancing_loss)``; the loss is None for a dense MLP. With
    ``checkpointed`` set (see :func:`checkpoint_blocks`), a training forward keeps only the
    block's input and recomputes the rest in backward.
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
        self.checkpointed = False

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: KVCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        # A monitored step records activations once, so it is not recomputed.
        if self.checkpointed and torch.is_grad_enabled() and self._hyperp_monitor is None:
            return checkpoint(self._forward, x, cos, sin, cache, use_reentrant=False)
        return self._forward(x, cos, sin, cache)

    def _forward(self, x, cos, sin, cache):
        attn_out = self.attn(self.attn_norm(x), cos, sin, cache) * self.residual_multiplier
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


def checkpoint_blocks(model: nn.Module, enabled: bool = True) -> None:
    """Activation checkpointing per transformer block: in training, each block keeps its input
    only and recomputes its activations during backward (less memory, about one more forward)."""
    for module in model.modules():
        if isinstance(module, Block):
            module.checkpointed = enabled


class Transformer(nn.Module):
    """The paper's decoder-only language model (docs/method.md §3), dense or MoE."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab, config.width)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.depth))
        self.final_norm = RMSNorm(config.width, config.norm_eps)
        self.head = nn.Linear(config.width, config.vocab, bias=False)
        cos, sin = rope_tables(config.head_dim, config.context, config.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Initialization of docs/method.md §2.3, §2.4 and §3; it fixes the sphere radii.

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

    def parameter_roles(self) -> dict[str, ParamRole]:
        """Every parameter's optimizer role by name (docs/method.md §2.1): the head, the embedding,
        norm gains as vectors, and every linear map and expert bank (``E x out x in``, one
        matrix per expert) as hidden matrices."""
        roles: dict[str, ParamRole] = {}
        for prefix, module in self.named_modules():
            if module is self.head:
                role = ParamRole(Role.HEAD)
            elif module is self.embedding:
                role = ParamRole(Role.EMBEDDING)
            elif isinstance(module, RMSNorm):
                role = ParamRole(Role.VECTOR)
            elif isinstance(module, nn.Linear | MoE):
                role = ParamRole(Role.MATRIX, layout="batch", transposed=False)
            else:
                continue
            for name, _ in module.named_parameters(recurse=False):
                roles[f"{prefix}.{name}" if prefix else name] = role
        return roles

    def get_output_embeddings(self) -> nn.Linear:
        return self.head

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embedding

    def forward(
        self,
        tokens: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        cache: KVCache | None = None,
    ) -> ModelOutput:
        """Logits of ``tokens`` (batch x length); with ``cache``, ``tokens`` are the next
        positions after those already cached, and their keys and values are appended."""
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be batch x length, got shape {tuple(tokens.shape)}")
        start = 0 if cache is None else cache.length
        end = start + tokens.shape[1]
        if end > self.config.context:
            raise ValueError(
                f"sequence length {end} exceeds model.context = {self.config.context}; "
                "shorten the sequences or raise model.context"
            )
        cos, sin = self.rope_cos[start:end], self.rope_sin[start:end]
        x = self.embedding(tokens).float()
        aux_loss = x.new_zeros(())
        for block in self.blocks:
            x, block_aux = block(x, cos, sin, cache)
            if block_aux is not None:
                aux_loss = aux_loss + block_aux
        if cache is not None:
            cache.length = end
        logits = self.head(self.final_norm(x))
        if self.config.output_multiplier != 1.0:
            logits = logits * self.config.output_multiplier
        return ModelOutput.from_logits(logits, targets, aux_loss)

    def num_params(self) -> int:
        """Trainable parameters actually allocated (compare ``config.num_params()``)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    @torch.no_grad()
    def stream(
        self,
        prompt: torch.Tensor,
        max_new_tokens: int,
        *,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        generator: torch.Generator | None = None,
    ) -> Iterator[torch.Tensor]:
        """Yield ``max_new_tokens`` sampled tokens (each of shape ``batch``), one at a time.

        Each step runs only the newest token against the KV cache. When the cache reaches
        ``model.context`` it is rebuilt from the last ``context // 2`` tokens, so decoding can
        run past the context the model was trained with (seeing at most a context of history).
        ``temperature = 0`` is greedy decoding.
        """
        depth, context = self.config.depth, self.config.context
        cache = None

        def start(tokens: torch.Tensor) -> torch.Tensor:
            nonlocal cache
            cache = KVCache(depth, context)
            return self(tokens, cache=cache).logits[:, -1]

        def extend(token: torch.Tensor) -> torch.Tensor:
            return self(token, cache=cache).logits[:, -1]

        sampling = (temperature, top_k, top_p, generator)
        yield from decode(start, extend, prompt, max_new_tokens, context, *sampling)

    @torch.no_grad()
    def generate(
        self,
        prompt: torch.Tensor,
        max_new_tokens: int,
        *,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The prompt followed by ``max_new_tokens`` sampled tokens (see :meth:`stream`)."""
        new = list(
            self.stream(
                prompt,
                max_new_tokens,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                generator=generator,
            )
        )
        return torch.cat([prompt, *(token[:, None] for token in new)], dim=1)


def decode(
    start: Callable[[torch.Tensor], torch.Tensor],
    extend: Callable[[torch.Tensor], torch.Tensor],
    prompt: torch.Tensor,
    max_new_tokens: int,
    context: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Iterator[torch.Tensor]:
    """The decoding loop of every model hyperp generates with: yield ``max_new_tokens`` sampled
    tokens (each of shape ``batch``). ``start(tokens)`` runs a fresh KV cache over ``tokens`` and
    ``extend(token)`` one new token (``batch x 1``) against it; both return the last position's
    logits. When the cache holds ``context`` positions it is rebuilt from the last
    ``context // 2`` tokens, so decoding runs past the model's positions (seeing at most a
    context of history)."""
    if prompt.ndim != 2 or prompt.shape[1] == 0:
        raise ValueError("the prompt must be batch x length with at least one token")
    if prompt.shape[1] > context:
        raise ValueError(
            f"the prompt has {prompt.shape[1]} tokens, more than the model's {context} "
            "positions (model.context); shorten the prompt"
        )
    logits, length, history = start(prompt), prompt.shape[1], prompt
    for produced in range(1, max_new_tokens + 1):
        token = sample_next_token(logits, temperature, top_k, top_p, generator)
        yield token
        if produced == max_new_tokens:
            return
        history = torch.cat([history[:, -context:], token[:, None]], dim=1)
        if length == context:
            recent = history[:, -(context // 2) :]
            logits, length = start(recent), recent.shape[1]
        else:
            logits, length = extend(token[:, None]), length + 1


def sample_next_token(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One token per row of ``logits`` (batch x vocab): greedy when ``temperature`` is 0,
    else sampled from the softmax at that temperature, restricted to the ``top_k`` most likely
    tokens and to the smallest set whose probability reaches ``top_p`` (nucleus)."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        kth_largest = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth_largest, -math.inf)
    if top_p is not None and top_p < 1.0:
        if top_p <= 0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        ordered, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(ordered, dim=-1)
        # Drop a token when the tokens more likely than it already reach top_p.
        drop = probs.cumsum(dim=-1) - probs >= top_p
        ordered = ordered.masked_fill(drop, -math.inf)
        logits = torch.full_like(logits, -math.inf).scatter(-1, order, ordered)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
