"""The paper's dense and MoE transformer family (docs/method.md §3).

``ModelConfig`` is plain data and loads no torch; the modules are imported on first use, so
that the run's config (:mod:`hyperp.train.config`) and the sweep and reproduction readers built
on it stay free of torch.
"""

from typing import Any

from hyperp.model.config import ModelConfig

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

_MODULES = {
    "MoE": "moe",
    "SwiGLU": "moe",
    "load_balancing_loss": "moe",
    "Block": "transformer",
    "KVCache": "transformer",
    "ModelOutput": "transformer",
    "RMSNorm": "transformer",
    "Transformer": "transformer",
}


def __getattr__(name: str) -> Any:
    if name not in _MODULES:
        raise AttributeError(f"module 'hyperp.model' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"hyperp.model.{_MODULES[name]}"), name)
