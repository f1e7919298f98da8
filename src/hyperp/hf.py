"""Hugging Face causal LMs from local files, sharded as the trainer shards its own model.

``transformers`` builds the model from a config dict or a local directory (``config.json``,
weights optional); nothing is downloaded and no model code from files runs (a config naming
remote code is refused). Roles come from the module structure (:mod:`hyperp.optim.roles`: the
head from ``get_output_embeddings``, embeddings, vectors, hidden matrices, GPT-2's ``Conv1D`` as
transposed, tied heads as embeddings). FSDP2 shards each decoder layer (the classes a model
lists in ``_no_split_modules``) and then the root, like :func:`hyperp.train.distributed.parallelize`
shards our blocks::

    model = build_hf_model({"model_type": "llama", "hidden_size": 256, ...})
    roles = role_map(model)           # by name: survives sharding
    shard_hf_model(model, mesh)
    opt = build_optimizer(model, "hyperp", lr=0.02, roles=roles)
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

__all__ = [
    "build_hf_model",
    "decoder_layers",
    "read_hf_config",
    "require_transformers",
    "shard_hf_model",
]


def read_hf_config(config: Mapping[str, Any] | str | os.PathLike) -> dict[str, Any]:
    """A config dict, or a local ``config.json`` (or a directory holding one), read as JSON."""
    if isinstance(config, Mapping):
        data = dict(config)
    else:
        path = Path(config)
        path = path / "config.json" if path.is_dir() else path
        if not path.is_file():
            raise ValueError(f"{path}: no such file; give a config.json or a directory holding one")
        try:
            data = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{path} is not a JSON config ({error})") from None
    if not isinstance(data, dict) or not isinstance(data.get("model_type"), str):
        raise ValueError(
            "a Hugging Face config needs a 'model_type' (e.g. 'llama', 'qwen3', 'gpt2')"
        )
    if "auto_map" in data:
        raise ValueError(
            "this config names its own model code (auto_map), which hyperp does not run; "
            "use a model type that transformers ships"
        )
    return data


def require_transformers():
    try:
        import transformers
    except ImportError:
        raise ValueError(
            "Hugging Face models need transformers: pip install 'hyperp[hf]'"
        ) from None
    return transformers


def build_hf_model(source: Mapping[str, Any] | str | os.PathLike) -> nn.Module:
    """A causal LM from a config dict or a local directory; a directory's safetensors weights
    are loaded when it has them, else the model is initialized as ``transformers`` does."""
    transformers = require_transformers()
    data = read_hf_config(source)
    model_type = data.pop("model_type")
    config = transformers.AutoConfig.for_model(model_type, **data)
    directory = None if isinstance(source, Mapping) else Path(source)
    if directory is not None and directory.is_dir() and any(directory.glob("*.safetensors")):
        return transformers.AutoModelForCausalLM.from_pretrained(
            directory, config=config, local_files_only=True, use_safetensors=True,
            trust_remote_code=False,
        )  # fmt: skip
    return transformers.AutoModelForCausalLM.from_config(config)


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The model's repeated decoder layers: modules of the classes it lists in
    ``_no_split_modules`` (every ``transformers`` causal LM lists its layer class)."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(
            f"{type(model).__name__} names no decoder layer class in _no_split_modules, so it "
            "cannot be sharded per layer; train it in one process or with DDP"
        )
    return layers


def shard_hf_model(model: nn.Module, mesh=None) -> nn.Module:
    """FSDP2 ``fully_shard`` on every decoder layer, then on the root (embeddings, final norm,
    head), on ``mesh`` (default: every process)."""
    from torch.distributed.fsdp import fully_shard

    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model
