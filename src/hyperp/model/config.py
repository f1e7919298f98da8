"""The model configuration of the paper's transformer family (docs/method.md §3).

One dataclass with plain fields (ints, floats, bools, strings) so that TOML ``[model]`` tables
and ``--model.key value`` overrides map onto it directly. Defaults reproduce the paper's d8 shape.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from hyperp.rules import ModelScale

__all__ = ["HEAD_INIT_RULES", "ModelConfig"]

HEAD_INIT_RULES = ("fixed", "inverse_width", "logit_scale")


@dataclass(frozen=True)
class ModelConfig:
    """Shape and parameterization of a dense or MoE decoder transformer (docs/method.md §3, §3.1).

    ``width`` defaults to ``aspect_ratio * depth`` and ``n_heads`` to ``2 * width // head_dim``
    (attention inner width ``2n``). ``vocab_size`` must be set to build a model; a training run
    leaves it None and takes it from its data (``hyperp.train.RunConfig.resolve``).
    ``logit_multiplier`` None means 1 here; a training run sets the method's own (``d0/d`` for
    the Muon baseline, docs/method.md §2.5). ``moe_sparsity = 0`` gives a dense SwiGLU MLP; otherwise each
    block has ``moe_sparsity * moe_granularity`` experts of hidden ``mlp_ratio * width /
    moe_granularity`` and routes each token to ``moe_granularity`` of them.

    Frozen: ``width`` and ``n_heads`` are resolved once, in construction, and no field can
    change afterwards and leave them stale. A changed copy is ``dataclasses.replace``, which
    keeps the resolved width and heads unless given ``width=None, n_heads=None``.
    """

    depth: int = 8
    width: int | None = None
    aspect_ratio: int = 128
    head_dim: int = 128
    n_heads: int | None = None
    n_kv_heads: int = 4
    vocab_size: int | None = None
    context: int = 1024
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-5
    rope_base: float = 10000.0
    qk_norm: bool = True
    gated_attention: bool = True
    depth_mup: bool = True
    base_head_dim: int = 128
    logit_multiplier: float | None = None
    head_init_std: float = 0.02
    head_init_rule: str = "fixed"
    base_width: int = 1024
    embedding_init_std: float = 1e-4
    moe_sparsity: int = 0
    moe_granularity: int = 1
    moe_shared_expert: bool = False
    moe_sqrt_gate: bool = True
    moe_balance_weight: float = 0.1
    moe_global_balance: bool = True
    # A Hugging Face causal LM instead of this family (hyperp.hf): a local directory holding
    # config.json (weights optional), or its config as a table. A run resolves either into
    # ``hf_config`` and mirrors the shape into depth, width, heads, vocabulary and context.
    hf: str = ""
    hf_config: dict | None = None

    def __post_init__(self) -> None:
        if self.is_hf:  # its shape comes from its own config (hyperp.hf.resolve_hf)
            return
        _require(self.depth >= 1, f"model.depth must be a positive integer, got {self.depth}")
        _require(
            self.aspect_ratio >= 1, f"model.aspect_ratio must be positive, got {self.aspect_ratio}"
        )
        if self.width is None:
            object.__setattr__(self, "width", self.aspect_ratio * self.depth)
        _require(self.width >= 1, f"model.width must be positive, got {self.width}")
        _require(
            self.head_dim >= 2 and self.head_dim % 2 == 0,
            f"model.head_dim must be an even number (RoPE rotates pairs), got {self.head_dim}",
        )
        if self.n_heads is None:
            _require(
                (2 * self.width) % self.head_dim == 0,
                f"the default 2*width/head_dim query heads needs 2*width ({2 * self.width}) to be "
                f"a multiple of model.head_dim ({self.head_dim}); change width or head_dim, or "
                "set model.n_heads",
            )
            object.__setattr__(self, "n_heads", 2 * self.width // self.head_dim)
        _require(
            self.n_heads >= 1 and self.n_kv_heads >= 1,
            f"model.n_heads ({self.n_heads}) and model.n_kv_heads ({self.n_kv_heads}) must be positive",
        )
        _require(
            self.n_heads % self.n_kv_heads == 0,
            f"model.n_heads ({self.n_heads}) must be a multiple of model.n_kv_heads "
            f"({self.n_kv_heads}) for grouped-query attention; change one of them",
        )
        _require(
            self.vocab_size is None or self.vocab_size >= 2,
            f"model.vocab_size must be at least 2, got {self.vocab_size}",
        )
        _require(
            self.logit_multiplier is None or self.logit_multiplier > 0,
            f"model.logit_multiplier must be positive, got {self.logit_multiplier}",
        )
        _require(self.context >= 1, f"model.context must be positive, got {self.context}")
        _require(self.norm_eps > 0, f"model.norm_eps must be positive, got {self.norm_eps}")
        _require(self.rope_base > 0, f"model.rope_base must be positive, got {self.rope_base}")
        _require(self.base_head_dim >= 1, "model.base_head_dim must be positive")
        _require(self.base_width >= 1, "model.base_width must be positive")
        _require(
            self.head_init_std > 0,
            "model.head_init_std must be positive (a zero head has no sphere)",
        )
        _require(self.embedding_init_std >= 0, "model.embedding_init_std must not be negative")
        _require(
            self.head_init_rule in HEAD_INIT_RULES,
            f"model.head_init_rule must be one of {HEAD_INIT_RULES}, got {self.head_init_rule!r}",
        )
        hidden = self.mlp_ratio * self.width
        _require(
            self.mlp_ratio > 0 and abs(hidden - round(hidden)) < 1e-9,
            f"model.mlp_ratio * width ({self.mlp_ratio} * {self.width}) must be a positive integer",
        )
        _require(
            self.moe_sparsity >= 0, f"model.moe_sparsity must be >= 0, got {self.moe_sparsity}"
        )
        _require(
            self.moe_granularity >= 1,
            f"model.moe_granularity must be >= 1, got {self.moe_granularity}",
        )
        if self.is_moe:
            _require(
                round(hidden) % self.moe_granularity == 0,
                f"the expert hidden size mlp_ratio*width/moe_granularity = {round(hidden)}/"
                f"{self.moe_granularity} is not an integer; pick a granularity that divides "
                f"{round(hidden)}",
            )
            _require(
                self.moe_balance_weight >= 0,
                f"model.moe_balance_weight must be >= 0, got {self.moe_balance_weight}",
            )
            if self.moe_shared_expert:
                _require(
                    self.moe_granularity >= 2 and self.n_experts >= 2,
                    "a shared expert takes one of the k active slots, so it needs "
                    "moe_granularity >= 2 (one shared + at least one routed expert); "
                    "raise moe_granularity or set moe_shared_expert = false",
                )

    # ----- derived shapes -------------------------------------------------------------------

    @property
    def is_hf(self) -> bool:
        """A Hugging Face model (``hf`` or ``hf_config`` set), not this family."""
        return bool(self.hf) or self.hf_config is not None

    @property
    def is_moe(self) -> bool:
        return self.moe_sparsity > 0

    @property
    def mlp_hidden(self) -> int:
        """Hidden size of the dense SwiGLU MLP (``4n`` in the paper)."""
        return round(self.mlp_ratio * self.width)

    @property
    def n_experts(self) -> int:
        """All expert slots ``s * k`` (a shared expert, if any, is one of them)."""
        return self.moe_sparsity * self.moe_granularity

    @property
    def n_routed_experts(self) -> int:
        return self.n_experts - (1 if self.moe_shared_expert else 0)

    @property
    def experts_per_token(self) -> int:
        """Routed experts chosen per token: ``k``, or ``k - 1`` beside a shared expert."""
        return self.moe_granularity - (1 if self.moe_shared_expert else 0)

    @property
    def expert_hidden(self) -> int:
        return self.mlp_hidden // self.moe_granularity

    @property
    def attention_width(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_width(self) -> int:
        return self.n_kv_heads * self.head_dim

    @property
    def vocab(self) -> int:
        """``vocab_size``, which must be set to build or count a model."""
        if self.vocab_size is None:
            raise ValueError(
                "model.vocab_size is not set; set it (e.g. ModelConfig(vocab_size=32000)), or "
                "let a training run take it from its data"
            )
        return self.vocab_size

    @property
    def output_multiplier(self) -> float:
        """The factor applied to the logits (``logit_multiplier``, 1 when unset)."""
        return 1.0 if self.logit_multiplier is None else self.logit_multiplier

    @property
    def residual_multiplier(self) -> float:
        """Depth-muP branch multiplier ``1/sqrt(2L)`` (docs/method.md §3), or 1 when switched off."""
        return 1.0 / math.sqrt(2 * self.depth) if self.depth_mup else 1.0

    @property
    def softmax_scale(self) -> float:
        """Attention scale ``sqrt(hd0)/hs`` (docs/method.md §3)."""
        return math.sqrt(self.base_head_dim) / self.head_dim

    @property
    def head_std(self) -> float:
        """Output head init std after the width rule (docs/method.md §3): ``fixed`` keeps
        ``head_init_std``; ``inverse_width`` uses ``head_init_std * base_width / width``;
        ``logit_scale`` uses ``head_init_std * sqrt(base_width / width)``, which holds the initial
        logit std ``head_std * sqrt(width)`` at its value at ``base_width``."""
        if self.head_init_rule == "inverse_width":
            return self.head_init_std * self.base_width / self.width
        if self.head_init_rule == "logit_scale":
            return self.head_init_std * math.sqrt(self.base_width / self.width)
        return self.head_init_std

    # ----- counts -----------------------------------------------------------------------------

    def scale(self) -> ModelScale:
        """The dense-equivalent shape used by the transfer rules and FLOP counts (docs/method.md §4)."""
        return ModelScale(
            depth=self.depth,
            width=self.width,
            aspect_ratio=self.aspect_ratio,
            head_dim=self.head_dim,
            n_heads=self.n_heads,
            n_kv_heads=self.n_kv_heads,
            vocab_size=self.vocab,
            context=self.context,
        )

    def num_params(self, active_only: bool = False) -> int:
        """Parameters of :class:`~hyperp.model.Transformer` with this config, counted
        analytically (nothing is allocated). ``active_only`` counts the experts a token uses
        (``k`` expert MLPs, shared one included) instead of all of them."""
        n, L = self.width, self.depth
        attention = n * self.attention_width * 2 + n * self.kv_width * 2
        if self.gated_attention:
            attention += n * self.n_heads
        if self.qk_norm:
            attention += 2 * self.head_dim
        norms = 2 * n
        if self.is_moe:
            one_expert = 3 * n * self.expert_hidden
            if active_only:
                mlp = self.moe_granularity * one_expert
            else:
                mlp = self.n_experts * one_expert
            mlp += n * self.n_routed_experts  # router
        else:
            mlp = 3 * n * self.mlp_hidden
        per_block = attention + norms + mlp
        return L * per_block + 2 * self.vocab * n + n  # + embedding, head, final norm gain

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> ModelConfig:
        """Build from a mapping; unknown keys are errors (a typo must not be ignored)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"unknown model config keys {unknown}; valid keys are: {', '.join(sorted(known))}"
            )
        return cls(**values)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)
