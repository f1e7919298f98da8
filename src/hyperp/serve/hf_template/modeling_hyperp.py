"""A hyperp transformer for ``transformers`` (loaded with ``trust_remote_code=True``).

It computes the same function as ``hyperp.model.Transformer``: pre-norm blocks with RMSNorm,
grouped-query attention with optional QK-norm (before RoPE) and per-head sigmoid output gates,
half-split RoPE, the attention softmax scale, the Depth-muP branch multiplier and the logit
multiplier the model was trained with, and a SwiGLU MLP or a token-choice MoE (top-k softmax
over the chosen logits, optional SqrtGate and shared expert). Keys and values are cached in a
``transformers`` ``Cache`` for ``generate``.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_hyperp import HyperpConfig

# The output field that carries the cache was renamed in transformers 5.x.
_CACHE_FIELD = (
    "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"
)


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), self.eps).to(x.dtype)


def rope_angles(position_ids: torch.Tensor, head_dim: int, base: float):
    """cos and sin (batch x 1 x length x head_dim) of the half-split RoPE, computed in float64
    as hyperp's tables are (no buffer: loading on the meta device would leave it empty)."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float64, device=position_ids.device)
    inv_freq = 1.0 / base ** (exponents / head_dim)
    angles = position_ids.double()[..., None] * inv_freq
    angles = torch.cat([angles, angles], dim=-1).unsqueeze(1)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    dtype = x.dtype
    x = x.float()
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x * cos + rotated * sin).to(dtype)


class SwiGLU(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.gate = nn.Linear(width, hidden, bias=False)
        self.up = nn.Linear(width, hidden, bias=False)
        self.down = nn.Linear(hidden, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class MoE(nn.Module):
    def __init__(self, config: HyperpConfig) -> None:
        super().__init__()
        width, hidden, experts = (
            config.hidden_size,
            config.moe_intermediate_size,
            config.num_routed_experts,
        )
        self.top_k = config.num_experts_per_tok
        self.sqrt_gate = config.sqrt_gate
        self.router = nn.Linear(width, experts, bias=False)
        self.w_gate = nn.Parameter(torch.empty(experts, hidden, width))
        self.w_up = nn.Parameter(torch.empty(experts, hidden, width))
        self.w_down = nn.Parameter(torch.empty(experts, width, hidden))
        self.shared = SwiGLU(width, hidden) if config.shared_expert else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.reshape(-1, x.shape[-1])
        logits = F.linear(tokens.float(), self.router.weight.float())
        top_logits, expert_index = torch.topk(logits, self.top_k, dim=-1)
        gates = torch.softmax(top_logits, dim=-1)
        combine = gates.sqrt() if self.sqrt_gate else gates
        routed = torch.zeros_like(tokens, dtype=torch.float32)
        for expert in expert_index.unique().tolist():
            rows, slot = (expert_index == expert).nonzero(as_tuple=True)
            chosen = tokens[rows]
            hidden = F.silu(F.linear(chosen, self.w_gate[expert])) * F.linear(
                chosen, self.w_up[expert]
            )
            out = F.linear(hidden, self.w_down[expert]).float()
            routed.index_add_(0, rows, out * combine[rows, slot].unsqueeze(-1))
        if self.shared is not None:
            shared = self.shared(tokens).float()
            if self.sqrt_gate:
                routed = math.sqrt(0.5) * routed + math.sqrt(0.5) * shared
            else:
                routed = routed + shared
        return routed.reshape(x.shape)


class Attention(nn.Module):
    def __init__(self, config: HyperpConfig, layer_index: int) -> None:
        super().__init__()
        self.layer_index = layer_index
        self.n_heads = config.num_attention_heads
        self.n_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.scale = config.softmax_scale
        width = config.hidden_size
        self.q = nn.Linear(width, self.n_heads * self.head_dim, bias=False)
        self.k = nn.Linear(width, self.n_kv_heads * self.head_dim, bias=False)
        self.v = nn.Linear(width, self.n_kv_heads * self.head_dim, bias=False)
        self.o = nn.Linear(self.n_heads * self.head_dim, width, bias=False)
        self.gate = nn.Linear(width, self.n_heads, bias=False) if config.gated_attention else None
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps) if config.qk_norm else None

    def forward(self, x, cos, sin, mask, cache):
        batch, length, _ = x.shape
        q = self.q(x).view(batch, length, self.n_heads, self.head_dim)
        k = self.k(x).view(batch, length, self.n_kv_heads, self.head_dim)
        v = self.v(x).view(batch, length, self.n_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q = apply_rope(q.transpose(1, 2), cos, sin)
        k = apply_rope(k.transpose(1, 2), cos, sin)
        v = v.transpose(1, 2)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_index)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, scale=self.scale, enable_gqa=self.n_heads != self.n_kv_heads
        )
        y = y.transpose(1, 2)
        if self.gate is not None:
            y = y * torch.sigmoid(self.gate(x)).unsqueeze(-1).to(y.dtype)
        return self.o(y.reshape(batch, length, self.n_heads * self.head_dim))


class Block(nn.Module):
    def __init__(self, config: HyperpConfig, layer_index: int) -> None:
        super().__init__()
        self.multiplier = config.residual_multiplier
        self.attn_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.attn = Attention(config, layer_index)
        self.mlp_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        if config.num_routed_experts > 0:
            self.mlp = MoE(config)
        else:
            self.mlp = SwiGLU(config.hidden_size, config.intermediate_size)

    def forward(self, x, cos, sin, mask, cache):
        # The residual stream stays fp32; branches run in the weights' dtype.
        dtype = self.attn_norm.weight.dtype
        attn_out = self.attn(self.attn_norm(x).to(dtype), cos, sin, mask, cache)
        x = x + (attn_out * self.multiplier).float()
        return x + (self.mlp(self.mlp_norm(x).to(dtype)) * self.multiplier).float()


class HyperpPreTrainedModel(PreTrainedModel):
    config_class = HyperpConfig
    base_model_prefix = "model"
    _no_split_modules = ["Block"]  # noqa: RUF012 (the transformers convention)
    _supports_sdpa = True

    def _init_weights(self, module: nn.Module) -> None:
        # Only reached for tensors a checkpoint does not provide; hyperp's own init.
        with torch.no_grad():
            if isinstance(module, RMSNorm):
                module.weight.fill_(1.0)
            elif isinstance(module, nn.Linear | nn.Embedding):
                bound = 1.0 / math.sqrt(module.weight.shape[-1])
                module.weight.uniform_(-bound, bound)
            elif isinstance(module, MoE):
                for bank in (module.w_gate, module.w_up, module.w_down):
                    bound = 1.0 / math.sqrt(bank.shape[-1])
                    bank.uniform_(-bound, bound)


class HyperpModel(HyperpPreTrainedModel):
    def __init__(self, config: HyperpConfig) -> None:
        super().__init__(config)
        self.embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.num_hidden_layers))
        self.final_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embedding

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embedding = value

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None):
        batch, length = input_ids.shape
        past = cache.get_seq_length() if cache is not None else 0
        total = past + length
        if position_ids is None:
            if attention_mask is not None:
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -length:]
            else:
                position_ids = torch.arange(past, total, device=input_ids.device).expand(batch, -1)
        if total > self.config.max_position_embeddings:
            raise ValueError(
                f"{total} positions are more than max_position_embeddings = "
                f"{self.config.max_position_embeddings}, the context the model was trained with"
            )
        cos, sin = rope_angles(position_ids, self.config.head_dim, self.config.rope_theta)
        mask = self._attention_mask(attention_mask, batch, length, total, input_ids.device)
        x = self.embedding(input_ids).float()
        for block in self.blocks:
            x = block(x, cos, sin, mask, cache)
        return self.final_norm(x)

    @staticmethod
    def _attention_mask(attention_mask, batch, length, total, device):
        """Boolean ``batch x 1 x length x total`` mask: causal over the cached prefix and the
        new tokens, minus padding. A padding row that would see nothing sees everything
        instead (its output is never used), so no row turns into NaN."""
        causal = torch.ones(length, total, dtype=torch.bool, device=device).tril(total - length)
        mask = causal.expand(batch, 1, length, total)
        if attention_mask is not None:
            mask = mask & attention_mask[:, None, None, -total:].bool()
            mask = mask | ~mask.any(dim=-1, keepdim=True)
        return mask


class HyperpForCausalLM(HyperpPreTrainedModel, GenerationMixin):
    def __init__(self, config: HyperpConfig) -> None:
        super().__init__(config)
        self.model = HyperpModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embedding

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        past_key_values=None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        cache = cache if cache is not None else past_key_values
        use_cache = self.config.use_cache if use_cache is None else use_cache
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        hidden = self.model(input_ids, attention_mask, position_ids, cache if use_cache else None)
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden.to(self.lm_head.weight.dtype))
        if self.config.logit_multiplier != 1.0:
            logits = logits * self.config.logit_multiplier
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].float().flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100
            )
        return CausalLMOutputWithPast(
            loss=loss, logits=logits, **{_CACHE_FIELD: cache if use_cache else None}
        )
