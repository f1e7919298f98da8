"""``train.init_from``: start a run from safetensors weights instead of a fresh init.

The path is a ``.safetensors`` file or a directory holding ``model.safetensors`` (or shards
listed in ``model.safetensors.index.json``), such as a Hugging Face model directory or a
``hyperp export``. Three layouts are read, told apart by their tensor names:

- ours (``embedding.weight``, ``blocks.0.attn.q.weight``, ...), as ``model.state_dict()`` saves;
- the Qwen3/Llama layout (``model.embed_tokens.weight``, ...) of a stock export, or of any such
  checkpoint whose shapes match; the multipliers an export folds into the weights (docs/method.md
  3: Depth-muP branch, softmax scale, logit multiplier) are divided back out with this run's
  values, so the loaded model computes the directory's function;
- the layout of an export with remote code (``model.<ours>``, ``lm_head.weight``).

Every tensor the model has must be there with its shape, and every tensor there must be used;
otherwise one line names the first that is not. The optimizer is built after the load, so the
spheres take their radii from the loaded matrices (docs/method.md §2.3). Safetensors files hold only
tensors (nothing in them runs), and shard names that would lead outside the directory are
refused.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch
from torch import nn

from hyperp.model import ModelConfig, Transformer

__all__ = ["check_initial_weights", "load_initial_weights"]

_INDEX = "model.safetensors.index.json"


def _weight_files(path: Path, setting: str = "train.init_from") -> list[Path]:
    """The safetensors files at ``path``, each inside the directory it came in; errors name
    ``setting``."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ValueError(f"{setting} {path}: no such file or directory")
    if (path / _INDEX).is_file():
        try:
            weight_map = json.loads((path / _INDEX).read_text())["weight_map"]
            names = sorted(set(weight_map.values()))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ValueError(f"{setting} {path / _INDEX} is not a safetensors index") from None
        for name in names:
            if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
                raise ValueError(
                    f"{setting} {path / _INDEX} names {name!r}, which is not a file "
                    "beside it; shards must sit in the same directory"
                )
        return [path / name for name in names]
    if (path / "model.safetensors").is_file():
        return [path / "model.safetensors"]
    raise ValueError(
        f"train.init_from {path}: no model.safetensors or {_INDEX} there; give a safetensors "
        "file or a Hugging Face model directory (e.g. from hyperp export)"
    )


def _open(path: str | Path) -> tuple[Path, dict[str, tuple[Path, tuple[int, ...]]]]:
    """Every tensor's name -> (its file, its shape), read from the headers only."""
    try:
        from safetensors import safe_open
    except ImportError:
        raise ValueError("train.init_from needs safetensors: pip install 'hyperp[hf]'") from None
    path = Path(path).expanduser()
    found: dict[str, tuple[Path, tuple[int, ...]]] = {}
    for file in _weight_files(path):
        if not file.is_file():
            raise ValueError(f"train.init_from {path}: shard {file.name} is missing")
        try:
            with safe_open(str(file), framework="pt") as handle:
                for name in handle.keys():  # noqa: SIM118 (not a dict)
                    found[name] = (file, tuple(handle.get_slice(name).get_shape()))
        except Exception as error:  # safetensors raises its own error types for bad headers
            raise ValueError(
                f"train.init_from {file} is not a safetensors file ({error})"
            ) from None
    return path, found


def _tied(path: Path) -> bool:
    config = path / "config.json" if path.is_dir() else path.parent / "config.json"
    try:
        return bool(json.loads(config.read_text()).get("tie_word_embeddings", False))
    except (OSError, ValueError, AttributeError):
        return False


def _sources(path: Path, found: dict, config: ModelConfig) -> dict[str, tuple[str, float]]:
    """Our tensor name -> (its name in the file, the factor to divide out)."""
    from hyperp.serve.export import stock_architecture, stock_layout

    ours = _model_shapes(config)
    if "model.embed_tokens.weight" in found:
        if stock_architecture(config) is None:
            raise ValueError(
                f"train.init_from {path} holds a Llama/Qwen3 checkpoint, but this model has "
                "gated attention or MoE layers; set model.gated_attention = false and "
                "model.moe_sparsity = 0 to start from it"
            )
        table = stock_layout(config)
        if "lm_head.weight" not in found and _tied(path):
            table["head.weight"] = ("model.embed_tokens.weight", config.output_multiplier)
        return {name: table[name] for name in ours}
    if "model.embedding.weight" in found:
        return {n: ("lm_head.weight" if n == "head.weight" else f"model.{n}", 1.0) for n in ours}
    return {name: (name, 1.0) for name in ours}


def _model_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Our state dict's names and shapes, from a model on the meta device (no memory)."""
    with torch.device("meta"):
        model = Transformer(config)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def check_initial_weights(path: str | Path, config: ModelConfig) -> dict[str, tuple[str, float]]:
    """Check that ``path`` holds exactly this model's tensors with its shapes, reading only
    the files' headers; one line names the first tensor that is missing, extra or misshapen."""
    path, found = _open(path)
    shapes = _model_shapes(config)
    sources = _sources(path, found, config)
    for ours, (theirs, _) in sources.items():
        if theirs not in found:
            raise ValueError(
                f"train.init_from {path}: no tensor {theirs} (this model's {ours}); the file "
                f"has {len(found)} tensors, e.g. {sorted(found)[:2]}: set model.* to the "
                "checkpoint's architecture"
            )
        if found[theirs][1] != shapes[ours]:
            raise ValueError(
                f"train.init_from {path}: {theirs} has shape {list(found[theirs][1])} but this "
                f"model's {ours} is {list(shapes[ours])}; set model.* to the checkpoint's "
                "architecture"
            )
    unused = sorted(set(found) - {theirs for theirs, _ in sources.values()})
    if unused:
        raise ValueError(
            f"train.init_from {path}: {len(unused)} tensors this model does not have, first "
            f"{unused[0]}; set model.* to the checkpoint's architecture (e.g. its depth)"
        )
    return sources


@torch.no_grad()
def load_initial_weights(model: nn.Module, path: str | Path, config: ModelConfig) -> None:
    """Copy the weights at ``path`` into ``model`` (unsharded, before the optimizer exists)."""
    from safetensors import safe_open

    sources = check_initial_weights(path, config)
    _, found = _open(path)
    state = model.state_dict()
    with contextlib.ExitStack() as stack:
        handles = {
            file: stack.enter_context(safe_open(str(file), framework="pt"))
            for file in {found[theirs][0] for theirs, _ in sources.values()}
        }
        for ours, (theirs, factor) in sources.items():
            tensor = handles[found[theirs][0]].get_tensor(theirs).to(torch.float32)
            if factor != 1.0:
                tensor = tensor / factor
            state[ours].copy_(tensor.to(state[ours].dtype))
