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

``hyperp train`` takes such a model with ``model.hf = "DIR"`` or a ``[model.hf_config]`` table:
:class:`CausalLM` gives it the interface of hyperp's own ``Transformer`` (``forward(tokens,
targets)``, ``stream``), :func:`hf_scale` its shape for the plan, and :data:`NOT_APPLICABLE`
lists what of the method its structure rules out.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from hyperp.model.transformer import ModelOutput, decode
from hyperp.rules import ModelScale

if TYPE_CHECKING:
    from hyperp.model import ModelConfig
    from hyperp.train.config import RunConfig

__all__ = [
    "NOT_APPLICABLE",
    "CausalLM",
    "build_hf_model",
    "decoder_layers",
    "hf_scale",
    "hf_shape",
    "read_hf_config",
    "require_transformers",
    "resolve_hf",
    "shard_hf_model",
]

# The config keys that give an MoE's routed expert count, by model family.
EXPERT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts")

# What of the method a model of another family does not have, and so what a run of it lacks;
# the dry run and train.log print this list.
NOT_APPLICABLE = (
    "Depth-muP branch multiplier 1/sqrt(2L): the model adds its branches as they are (the "
    "depth factor of the LR rule still applies)",
    "this family's shape and init settings (model.depth, width, heads, qk_norm, gated_attention, "
    "head_init_rule, ...): the model's own config decides them",
    "attention Z-value, branch output RMS, router Z-value and MaxVio: they need hooks inside our "
    "blocks; monitor steps log residual_rms, outlier_pct per decoder layer and logit_rms, "
    "through forward hooks",
    "MoE: hyperp's expert banks, SqrtGate and global balancing loss; an HF MoE keeps its own "
    "layer and its own per-process balancing loss (when its config has output_router_logits)",
    "export: the run exports as the model itself (save_pretrained layout), not a hyperp layout",
)


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
    config = _auto_config(data)
    directory = None if isinstance(source, Mapping) else Path(source)
    if directory is not None and directory.is_dir() and any(directory.glob("*.safetensors")):
        model = transformers.AutoModelForCausalLM.from_pretrained(
            directory, config=config, local_files_only=True, use_safetensors=True,
            trust_remote_code=False, dtype=torch.float32,
        )  # fmt: skip
    else:
        model = transformers.AutoModelForCausalLM.from_config(config)
    return model.float().train()  # fp32 weights (autocast makes bf16), dropout as configured


def _auto_config(data: Mapping[str, Any]):
    values = dict(data)
    model_type = values.pop("model_type")
    try:
        return require_transformers().AutoConfig.for_model(model_type, **values)
    except ValueError as error:
        known = require_transformers().CONFIG_MAPPING
        if model_type not in known:
            raise ValueError(
                f"model_type {model_type!r} is not a model type this transformers knows "
                "(e.g. llama, qwen3, gpt2, mixtral)"
            ) from None
        raise ValueError(f"model_type {model_type!r}: {str(error)[:200]}") from None


def hf_shape(data: Mapping[str, Any]) -> dict[str, int]:
    """Width, depth, heads, head size, vocabulary and positions of a config dict, read through
    the ``transformers`` config (which maps GPT-2's ``n_embd`` to ``hidden_size`` and so on)."""
    config = _auto_config(data)
    missing = [
        name
        for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
        if not isinstance(getattr(config, name, None), int)
    ]
    if missing:
        raise ValueError(
            f"the {data['model_type']} config has no {', '.join(missing)}; hyperp needs them "
            "for the plan (set them in the config)"
        )
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    positions = getattr(config, "max_position_embeddings", None)
    return {
        "width": config.hidden_size,
        "depth": config.num_hidden_layers,
        "n_heads": heads,
        "n_kv_heads": getattr(config, "num_key_value_heads", None) or heads,
        "head_dim": head_dim,
        "vocab_size": config.vocab_size,
        "context": positions if isinstance(positions, int) else 0,
    }


def resolve_hf(
    config: RunConfig, data_vocab_size: int, saved: Mapping[str, Any] | None = None
) -> ModelConfig:
    """``config.model`` for a Hugging Face model, resolved: the config dict in ``hf_config``
    (from ``model.hf``'s ``config.json``, or ``saved``, the copy a resumed run recorded, since
    files outside a run directory are not read again once it has started), its shape mirrored
    into depth, width, heads, vocabulary and context. Settings that cannot apply are refused
    here, before any file is written, each with one line naming the fix."""
    from hyperp.model import ModelConfig

    model, optim, train = config.model, config.optim, config.train
    if model.hf and model.hf_config is not None:
        raise ValueError(
            "set model.hf (a directory) or model.hf_config (a table), not both; drop one"
        )
    own = ModelConfig(hf="?")  # the defaults, left unresolved as a Hugging Face model's are
    for field in fields(ModelConfig):
        if field.name not in ("hf", "hf_config") and getattr(model, field.name) != getattr(
            own, field.name
        ):
            raise ValueError(
                f"model.{field.name} is a setting of hyperp's own model family; a Hugging Face "
                f"model takes its shape from its config: drop model.{field.name} or set it in "
                "the model's config"
            )
    if saved is not None:
        data = read_hf_config(saved)
    elif model.hf_config is not None:
        data = read_hf_config(model.hf_config)
    else:
        directory = Path(model.hf)
        if not (directory / "config.json").is_file():
            raise ValueError(
                f"model.hf: {directory} is not a directory holding config.json; give a local "
                "Hugging Face model directory (nothing is downloaded)"
            )
        data = read_hf_config(directory)
        if (directory / "model.safetensors.index.json").is_file():
            from hyperp.train.initial import _weight_files

            _weight_files(directory, "model.hf")  # every shard a file beside the index
    shape = hf_shape(data)
    if optim.method == "muon" and (optim.base_depth or 0) not in (0, shape["depth"]):
        raise ValueError(
            "the Muon baseline multiplies the logits by d0/d, which a Hugging Face model has no "
            "place for; leave optim.base_depth unset (d0 = d) or use optim.method hyperp or adamw"
        )
    if train.init_from:
        raise ValueError(
            "train.init_from is for hyperp's own family; a Hugging Face model starts from the "
            "safetensors weights in its model.hf directory"
        )
    if train.activation_checkpointing and not _meta_model(data).supports_gradient_checkpointing:
        raise ValueError(
            f"model_type {data['model_type']!r} does not support gradient checkpointing in "
            "transformers, so train.activation_checkpointing cannot apply; set it to false"
        )
    if shape["vocab_size"] < data_vocab_size:
        raise ValueError(
            f"the model's vocab_size {shape['vocab_size']} is smaller than the data's "
            f"vocabulary ({data_vocab_size} ids); raise vocab_size in its config"
        )
    mirrored = {key: value for key, value in shape.items() if key != "context"}
    return replace(
        model,
        hf_config=data,
        context=shape["context"] or train.seq_len,
        logit_multiplier=1.0,
        **mirrored,
    )


def plan_lines(data: Mapping[str, Any], scale: ModelScale) -> tuple[str, ...]:
    """What the plan says of a Hugging Face model: its class and shape, and what of the
    method does not apply to it."""
    architecture = (data.get("architectures") or [f"{data['model_type']} causal LM"])[0]
    return (
        f"model: {architecture} (Hugging Face), depth {scale.depth} (num_hidden_layers), width "
        f"{scale.width} (hidden_size), vocabulary {scale.vocab_size}, {scale.params / 1e6:.2f}M "
        f"parameters counted from the model (a tied head twice); FLOPs per token 6N + "
        f"attention over train.seq_len = {scale.context}"
        + (
            "; an MoE's N counts the experts a token uses (k of E of each expert bank, the "
            "parameters named experts)"
            if _routing(data)[0]
            else ""
        ),
        *(f"not applicable to this model: {line}" for line in NOT_APPLICABLE),
    )


def hf_scale(data: Mapping[str, Any], context: int) -> ModelScale:
    """The model's shape for the transfer rule and FLOPs (docs/method.md §4): width
    ``hidden_size``, depth ``num_hidden_layers``, and N counted from the model built on the
    meta device (no memory): every parameter once, a tied head once more, since its matmul
    costs as an untied one does. ``context`` is the attention term's sequence length."""
    shape = hf_shape(data)
    model = _meta_model(data)
    params = sum(p.numel() for p in model.parameters())
    head, embedding = model.get_output_embeddings(), model.get_input_embeddings()
    if head is not None and embedding is not None and head.weight is embedding.weight:
        params += head.weight.numel()
    experts, routed = _routing(data)
    if experts:  # a token uses k of the E routed experts: N counts the active ones
        bank = sum(p.numel() for name, p in model.named_parameters() if ".experts." in name)
        params -= round(bank * (1 - routed / experts))
    return ModelScale(
        depth=shape["depth"],
        width=shape["width"],
        head_dim=shape["head_dim"],
        n_heads=shape["n_heads"],
        n_kv_heads=shape["n_kv_heads"],
        vocab_size=shape["vocab_size"],
        context=context,
        counted_params=params,
    )


def _routing(data: Mapping[str, Any]) -> tuple[int, int]:
    """Routed experts E and experts per token k of an MoE config (0, 0 for a dense one)."""
    experts = next((data[key] for key in EXPERT_KEYS if data.get(key)), 0)
    routed = data.get("num_experts_per_tok") or 0
    return (experts, routed) if experts and routed else (0, 0)


def _meta_model(data: Mapping[str, Any]) -> nn.Module:
    """The causal LM of a config dict on the meta device: its structure, no memory."""
    try:
        with torch.device("meta"):
            return require_transformers().AutoModelForCausalLM.from_config(_auto_config(data))
    except ValueError:
        raise ValueError(
            f"model_type {data['model_type']!r} has no causal LM in transformers; use a "
            "decoder model type (llama, qwen3, gpt2, mixtral, ...)"
        ) from None


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The model's repeated decoder layers: modules of the classes it lists in
    ``_no_split_modules`` (every ``transformers`` causal LM lists its layer class)."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    # by class and base classes: FSDP2 turns a sharded layer's class into a subclass of it
    layers = [m for m in model.modules() if any(c.__name__ in names for c in type(m).__mro__)]
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


class CausalLM(nn.Module):
    """A ``transformers`` causal LM (``.hf``) with the interface of hyperp's ``Transformer``:
    ``forward(tokens, targets)`` returns a :class:`~hyperp.model.ModelOutput` whose loss is
    the trainer's (cross-entropy of every position's logits against the next token, computed
    here from the logits, as our model does), and ``stream`` samples with the model's KV cache.
    A balancing loss the model reports (``aux_loss``, e.g. Mixtral with
    ``output_router_logits``) is weighted by its ``router_aux_loss_coef`` into ``aux_loss``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.hf = model
        self._no_split_modules = getattr(model, "_no_split_modules", None)

    @property
    def context(self) -> int:
        return hf_shape(self.hf.config.to_dict())["context"]

    @property
    def blocks(self) -> list[nn.Module]:
        """The decoder layers, which FSDP2 shards one by one (as our ``Transformer.blocks``)."""
        return decoder_layers(self.hf)

    def checkpoint_layers(self) -> None:
        """Activation checkpointing per decoder layer, by transformers' own gradient
        checkpointing (non-reentrant, as for our blocks); :func:`resolve_hf` has refused models
        without it."""
        kwargs = {"use_reentrant": False}
        if hasattr(self.hf, "activation_checkpointing_enable"):  # its name from transformers 5.25
            self.hf.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            self.hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

    def get_output_embeddings(self) -> nn.Module | None:
        return self.hf.get_output_embeddings()

    def monitor_points(self) -> tuple[list[nn.Module], nn.Module | None]:
        """The decoder layers and the head, for :func:`hyperp.monitor.collect`'s hooks."""
        return self.blocks, self.hf.get_output_embeddings()

    def get_input_embeddings(self) -> nn.Module:
        return self.hf.get_input_embeddings()

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor | None = None) -> ModelOutput:
        out = self.hf(input_ids=tokens, use_cache=False)
        logits = out.logits
        aux = getattr(out, "aux_loss", None)
        if aux is None:
            aux_loss = logits.new_zeros((), dtype=torch.float32)
        else:
            aux_loss = aux.float() * getattr(self.hf, "router_aux_loss_coef", 1.0)
        return ModelOutput.from_logits(logits, targets, aux_loss)

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
    ):
        """Yield ``max_new_tokens`` sampled tokens (each of shape ``batch``), as
        ``Transformer.stream`` does: the newest token against the model's KV cache, and past the
        model's positions a fresh start from the last half of them."""
        context = self.context or prompt.shape[1] + max_new_tokens
        past = None

        def extend(tokens: torch.Tensor) -> torch.Tensor:
            nonlocal past
            out = self.hf(input_ids=tokens, past_key_values=past, use_cache=True)
            past = out.past_key_values
            return out.logits[:, -1]

        def start(tokens: torch.Tensor) -> torch.Tensor:
            nonlocal past
            past = None
            return extend(tokens)

        sampling = (temperature, top_k, top_p, generator)
        yield from decode(start, extend, prompt, max_new_tokens, context, *sampling)
