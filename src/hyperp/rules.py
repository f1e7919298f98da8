"""HyperP transfer rules, token budgets, parameter counts, FLOPs and the shape of the LR
schedule (docs/method.md §4, §4.2).

Pure functions and frozen dataclasses; no torch. Every constant of the rule is a field with the
paper's value as its default, since users re-fit them.

    η_peak = η0 · (B/B0)^0.5 · (d0/d)^0.5 · (T/T0)^(-0.32)

No width factor (MuonH's relative step is width-invariant) and no factor for MoE sparsity or
granularity (SqrtGate carries that).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

__all__ = [
    "PAPER_BASE",
    "SCHEDULES",
    "ModelScale",
    "TransferResult",
    "TransferRule",
    "describe_schedule",
    "lr_schedule",
    "muon_logit_multiplier",
    "parse_number",
    "transfer",
]


def parse_number(text: str) -> float:
    """Read token counts and batch sizes as people write them: ``1e9``, ``10.4e9``, ``2**21``,
    ``2^21``, ``1_000_000``. Raises ``ValueError`` for anything else."""
    cleaned = text.replace("_", "").replace("^", "**")
    base, power, exponent = cleaned.partition("**")
    try:
        return float(base) ** float(exponent) if power else float(cleaned)
    except (ValueError, OverflowError):
        raise ValueError(f"not a number: {text!r} (examples: 1e9, 2**21)") from None


@dataclass(frozen=True)
class ModelScale:
    """The shape quantities that parameter counts and FLOPs depend on (docs/method.md §3, §4).

    ``width`` defaults to ``aspect_ratio * depth`` and ``n_heads`` to ``2 * width / head_dim``
    (attention inner width ``2n``), the paper's family. A model of another family (a Hugging
    Face model) gives ``counted_params``, its parameters as counted from the built model, which
    then stands for N in the budget and FLOPs.
    """

    depth: int
    width: int | None = None
    aspect_ratio: int = 128
    head_dim: int = 128
    n_heads: int | None = None
    n_kv_heads: int = 4
    vocab_size: int = 32000
    context: int = 4096
    counted_params: int | None = None

    def __post_init__(self) -> None:
        if self.depth < 1:
            raise ValueError(f"depth must be a positive integer, got {self.depth}")
        if self.width is None:
            object.__setattr__(self, "width", self.aspect_ratio * self.depth)
        if self.width < 1:
            raise ValueError(f"width must be positive, got {self.width}")
        if self.n_heads is None:
            if (2 * self.width) % self.head_dim:
                raise ValueError(
                    f"the default 2*width/head_dim query heads needs 2*width ({2 * self.width}) "
                    f"to be a multiple of head_dim ({self.head_dim}); set n_heads explicitly"
                )
            object.__setattr__(self, "n_heads", 2 * self.width // self.head_dim)
        if self.n_heads < 1 or self.n_kv_heads < 1:
            raise ValueError("n_heads and n_kv_heads must be positive")

    @property
    def params(self) -> int:
        """Dense-equivalent active parameters N(d) of docs/method.md §4 (embedding and head counted).

        ``12 n^2 d`` is the SwiGLU MLP (three n x 4n matrices per block); ``2 n d H hs`` the query
        and output projections; ``2 n d H_kv hs`` the key and value projections; ``2 V n`` the
        embedding and head. Norm gains and attention-gate matrices are not counted.
        ``counted_params`` stands for N when given.
        """
        if self.counted_params is not None:
            return self.counted_params
        n, d, hs = self.width, self.depth, self.head_dim
        return (
            12 * n * n * d
            + 2 * self.vocab_size * n
            + 2 * n * d * self.n_heads * hs
            + 2 * n * d * self.n_kv_heads * hs
        )

    @property
    def flops_per_token(self) -> float:
        """Training FLOPs per token: ``3 (2 N + 4 L (H hs) T_ctx)`` (docs/method.md §4)."""
        attention = 4 * self.depth * self.n_heads * self.head_dim * self.context
        return 3.0 * (2 * self.params + attention)


PAPER_BASE = ModelScale(depth=8)


@dataclass(frozen=True)
class TransferRule:
    """The HyperP rule: a base model tuned at (tokens, batch, lr) and the rule's exponents."""

    base: ModelScale = PAPER_BASE
    base_lr: float = 0.016
    base_tokens: float = 10.4e9
    base_batch: float = 2.0**21
    token_exponent: float = -0.32
    batch_exponent: float = 0.5
    depth_exponent: float = 0.5
    final_lr_fraction: float = 0.1

    def __post_init__(self) -> None:
        for name in ("base_lr", "base_tokens", "base_batch"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @classmethod
    def for_method(cls, method: str, **overrides) -> TransferRule:
        """The rule each method's LR follows: HyperP all factors; the Muon and AdamW baselines
        transfer by Depth-muP and the batch rule only (docs/method.md §2.5), i.e. no token factor."""
        if method == "hyperp":
            return cls(**overrides)
        if method in ("muon", "adamw"):
            return cls(**{"token_exponent": 0.0, **overrides})
        raise ValueError(f"unknown method {method!r}; use hyperp, muon or adamw")

    def tokens_for(self, target: ModelScale) -> float:
        """Chinchilla-style budget ``T0 · N(d) / N(d0)`` (docs/method.md §4)."""
        return self.base_tokens * target.params / self.base.params

    def lr_multiplier(self, target: ModelScale, tokens: float, batch: float) -> float:
        return (
            (batch / self.base_batch) ** self.batch_exponent
            * (self.base.depth / target.depth) ** self.depth_exponent
            * (tokens / self.base_tokens) ** self.token_exponent
        )

    def with_base(self, **changes) -> TransferRule:
        """A copy with base-shape fields changed, e.g. ``rule.with_base(depth=2, width=64)``."""
        return replace(self, base=replace(self.base, **changes))


@dataclass(frozen=True)
class TransferResult:
    """What the rule gives one target model."""

    scale: ModelScale
    lr: float
    lr_multiplier: float
    final_lr: float
    tokens: float
    batch: float
    params: int
    flops_per_token: float
    flops: float
    tokens_per_param: float
    steps: int
    rule: TransferRule = field(repr=False)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["rule"] = asdict(self.rule)
        return out


def transfer(
    target: ModelScale,
    *,
    rule: TransferRule | None = None,
    tokens: float | None = None,
    batch: float | None = None,
) -> TransferResult:
    """Peak LR, token budget, batch and compute for ``target`` from a tuned base (docs/method.md §4).

    ``tokens`` defaults to the Chinchilla-style budget, ``batch`` to the base batch.
    """
    rule = rule or TransferRule()
    tokens = rule.tokens_for(target) if tokens is None else float(tokens)
    batch = rule.base_batch if batch is None else float(batch)
    if tokens <= 0 or batch <= 0:
        raise ValueError(f"tokens and batch must be positive, got tokens={tokens}, batch={batch}")
    multiplier = rule.lr_multiplier(target, tokens, batch)
    lr = rule.base_lr * multiplier
    return TransferResult(
        scale=target,
        lr=lr,
        lr_multiplier=multiplier,
        final_lr=lr * rule.final_lr_fraction,
        tokens=tokens,
        batch=batch,
        params=target.params,
        flops_per_token=target.flops_per_token,
        flops=target.flops_per_token * tokens,
        tokens_per_param=tokens / target.params,
        steps=max(1, math.ceil(tokens / batch)),
        rule=rule,
    )


def muon_logit_multiplier(base_depth: int, depth: int) -> float:
    """The Muon baseline's output-logit multiplier ``d0/d`` (docs/method.md §2.5)."""
    return base_depth / depth


SCHEDULES = ("linear", "cosine", "wsd")


def lr_schedule(
    step: int,
    total_steps: int,
    *,
    warmup_steps: int = 0,
    final_fraction: float = 0.1,
    shape: str = "linear",
    decay_fraction: float = 0.2,
) -> float:
    """LR multiplier at ``step`` (0-based) of ``total_steps`` (docs/method.md §4.2): optional
    linear warmup, then a shape that falls from 1 to ``final_fraction`` at the last step.

    ``linear`` (the paper's, with no warmup): a straight line. ``cosine``: half a cosine.
    ``wsd`` (warmup-stable-decay): 1 until the last ``decay_fraction`` of the steps after
    warmup, then a straight line. The transfer rule sets the peak; every shape scales it alike.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be at least 1, got {total_steps}")
    if shape not in SCHEDULES:
        raise ValueError(f"unknown schedule {shape!r}; use one of: {', '.join(SCHEDULES)}")
    if not 0 < decay_fraction <= 1:
        raise ValueError(f"decay_fraction must be in (0, 1], got {decay_fraction}")
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps - 1)
    progress = min(1.0, max(0.0, (step - warmup_steps) / decay_steps))
    if shape == "cosine":
        return final_fraction + (1.0 - final_fraction) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if shape == "wsd":
        stable = 1.0 - decay_fraction
        progress = max(0.0, progress - stable) / decay_fraction
    return 1.0 - (1.0 - final_fraction) * progress


def describe_schedule(
    shape: str, *, warmup_steps: int, final_fraction: float, decay_fraction: float
) -> str:
    """One line naming a schedule, as the plan prints it."""
    warmup = f"warmup {warmup_steps} steps, " if warmup_steps else ""
    if shape == "cosine":
        return f"schedule: {warmup}cosine decay to {final_fraction:g} x peak"
    if shape == "wsd":
        return (
            f"schedule: {warmup}constant, then linear decay to {final_fraction:g} x peak over "
            f"the last {decay_fraction:g} of the steps (wsd)"
        )
    return f"schedule: {warmup}linear decay to {final_fraction:g} x peak"
