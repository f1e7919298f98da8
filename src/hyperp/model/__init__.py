"""The paper's dense and MoE transformer family (docs/method.md §3)."""

from hyperp.model.config import ModelConfig
from hyperp.model.moe import MoE, SwiGLU, load_balancing_loss
from hyperp.model.transformer import Block, KVCache, ModelOutput, RMSNorm, Transformer

__all__ = [
    "Block",
    "KVCache",
    "MoE",
    "ModelConfig",
    "ModelOutput",
    "RMSNorm",
    "SwiGLU",
    "Transformer",
    "load_balancing_loss",
]
