"""``hyperp export``: a run as a Hugging Face model directory (extra ``hf``).

Where the run's architecture is a stock ``transformers`` one, the directory uses it and needs
no remote code (vLLM, llama.cpp converters and lm-eval take it as it is):

- dense, no gated attention, QK-norm: ``Qwen3ForCausalLM``;
- dense, no gated attention, no QK-norm: ``LlamaForCausalLM``.

Our multipliers are folded into the weights: the Depth-muP branch multiplier into each
branch's output projection (``o_proj``, ``down_proj``), the softmax scale (stock models use
``1/sqrt(head_dim)``) into the query (QK-norm gain, or ``q_proj`` without QK-norm; RoPE is
linear so the factor passes through it), the logit multiplier into ``lm_head``.

Otherwise (gated attention, MoE) the directory carries ``modeling_hyperp.py`` and
``configuration_hyperp.py`` (from :mod:`hyperp.serve.hf_template`), which compute our forward
exactly; load it with ``trust_remote_code=True``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from hyperp.data.preparation import EOT_TOKEN
from hyperp.fileio import give_usual_modes
from hyperp.model import ModelConfig
from hyperp.serve.run import LoadedRun, load_run
from hyperp.train.checkpoint import keep_checkpoint

__all__ = [
    "DTYPES",
    "ExportResult",
    "export_run",
    "stock_architecture",
    "stock_blockers",
    "stock_layout",
]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
_TEMPLATE = Path(__file__).resolve().parent / "hf_template"
_REMOTE_FILES = ("configuration_hyperp.py", "modeling_hyperp.py")


@dataclass(frozen=True)
class ExportResult:
    directory: Path
    architecture: str  # the transformers class name, e.g. Qwen3ForCausalLM
    remote_code: bool  # True: load with trust_remote_code=True
    step: int
    files: tuple[str, ...]
    blocked_by: tuple[str, ...] = ()  # with remote code: the settings that ruled out a stock one


def stock_blockers(model: ModelConfig) -> tuple[str, ...]:
    """The settings that keep ``model`` from a stock ``transformers`` architecture, each with
    what a stock export needs instead."""
    blockers = []
    if model.is_hf:  # exported as the model itself
        return ()
    if model.gated_attention:
        blockers.append(
            "model.gated_attention = true (train with --model.gated_attention false for a stock "
            "Qwen3/Llama export)"
        )
    if model.is_moe:
        blockers.append(
            f"model.moe_sparsity = {model.moe_sparsity} (no stock architecture has hyperp's MoE "
            "layer; a dense model, moe_sparsity 0, exports as stock Qwen3/Llama)"
        )
    return tuple(blockers)


def stock_architecture(model: ModelConfig) -> str | None:
    """The ``transformers`` architecture that computes exactly our function, or None."""
    if stock_blockers(model):
        return None
    return "Qwen3ForCausalLM" if model.qk_norm else "LlamaForCausalLM"


def _require_hf() -> None:
    try:
        import safetensors  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        raise ValueError("hyperp export needs the hf extra: pip install 'hyperp[hf]'") from None


# ----- weights ------------------------------------------------------------------------------


def stock_layout(model: ModelConfig) -> dict[str, tuple[str, float]]:
    """Each of our tensors' name in the Qwen3/Llama layout and the factor folded into it
    (export multiplies by it; :mod:`hyperp.train.initial` divides it back out)."""
    branch = model.residual_multiplier
    query = model.softmax_scale * math.sqrt(model.head_dim)  # stock scale is 1/sqrt(head_dim)
    table = {
        "embedding.weight": ("model.embed_tokens.weight", 1.0),
        "final_norm.weight": ("model.norm.weight", 1.0),
        "head.weight": ("lm_head.weight", model.output_multiplier),
    }
    for i in range(model.depth):
        ours, theirs = f"blocks.{i}.", f"model.layers.{i}."
        if model.qk_norm:
            table[ours + "attn.q_norm.weight"] = (theirs + "self_attn.q_norm.weight", query)
            table[ours + "attn.k_norm.weight"] = (theirs + "self_attn.k_norm.weight", 1.0)
        q_factor = 1.0 if model.qk_norm else query
        table[ours + "attn.q.weight"] = (theirs + "self_attn.q_proj.weight", q_factor)
        table[ours + "attn.k.weight"] = (theirs + "self_attn.k_proj.weight", 1.0)
        table[ours + "attn.v.weight"] = (theirs + "self_attn.v_proj.weight", 1.0)
        table[ours + "attn.o.weight"] = (theirs + "self_attn.o_proj.weight", branch)
        table[ours + "attn_norm.weight"] = (theirs + "input_layernorm.weight", 1.0)
        table[ours + "mlp_norm.weight"] = (theirs + "post_attention_layernorm.weight", 1.0)
        table[ours + "mlp.gate.weight"] = (theirs + "mlp.gate_proj.weight", 1.0)
        table[ours + "mlp.up.weight"] = (theirs + "mlp.up_proj.weight", 1.0)
        table[ours + "mlp.down.weight"] = (theirs + "mlp.down_proj.weight", branch)
    return table


def _stock_weights(model: ModelConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict renamed to the Qwen3/Llama layout, with the multipliers folded in."""
    return {
        theirs: state[ours] * factor if factor != 1.0 else state[ours]
        for ours, (theirs, factor) in stock_layout(model).items()
    }


def _remote_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The modeling file mirrors our module tree under ``model.``; the head is ``lm_head``."""
    return {
        ("lm_head.weight" if name == "head.weight" else f"model.{name}"): tensor
        for name, tensor in state.items()
    }


def _write_weights(
    weights: dict[str, torch.Tensor], directory: Path, max_shard_size: int | str
) -> list[str]:
    """``model.safetensors``, or shards plus ``model.safetensors.index.json`` past
    ``max_shard_size``, named and indexed as ``transformers`` does."""
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    split = split_torch_state_dict_into_shards(weights, max_shard_size=max_shard_size)
    for filename, names in split.filename_to_tensors.items():
        shard = {name: weights[name].contiguous() for name in names}
        save_file(shard, str(directory / filename), metadata={"format": "pt"})
    files = list(split.filename_to_tensors)
    if split.is_sharded:
        index = {
            "metadata": {"total_size": sum(t.numel() * t.element_size() for t in weights.values())},
            "weight_map": split.tensor_to_filename,
        }
        (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        files.append("model.safetensors.index.json")
    return files


def _write_hf_model(run: LoadedRun, directory: Path, dtype, max_shard_size) -> list[str]:
    """A Hugging Face model's run: ``save_pretrained`` of the model itself (tied weights stored
    once, as transformers does), its end-of-text id the run's."""
    model = run.model.hf.to(dtype)
    model.config.bos_token_id = model.config.eos_token_id = run.eot_id
    model.save_pretrained(directory, max_shard_size=max_shard_size, safe_serialization=True)
    return sorted(path.name for path in directory.iterdir())


# ----- configs and tokenizer -------------------------------------------------------------------


def _stock_config(architecture: str, model: ModelConfig, eot_id: int | None, dtype: str):
    from transformers import LlamaConfig, Qwen3Config

    shared = dict(
        vocab_size=model.vocab_size,
        hidden_size=model.width,
        intermediate_size=model.mlp_hidden,
        num_hidden_layers=model.depth,
        num_attention_heads=model.n_heads,
        num_key_value_heads=model.n_kv_heads,
        head_dim=model.head_dim,
        hidden_act="silu",
        max_position_embeddings=model.context,
        rms_norm_eps=model.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": model.rope_base},
        attention_bias=False,
        tie_word_embeddings=False,
        bos_token_id=eot_id,
        eos_token_id=eot_id,
        pad_token_id=eot_id,
        architectures=[architecture],
        dtype=dtype,
    )
    if architecture == "Qwen3ForCausalLM":
        return Qwen3Config(use_sliding_window=False, **shared)
    return LlamaConfig(mlp_bias=False, **shared)


def _remote_config(model: ModelConfig, eot_id: int | None, dtype: str):
    from hyperp.serve.hf_template.configuration_hyperp import HyperpConfig

    config = HyperpConfig(
        vocab_size=model.vocab_size,
        hidden_size=model.width,
        num_hidden_layers=model.depth,
        num_attention_heads=model.n_heads,
        num_key_value_heads=model.n_kv_heads,
        head_dim=model.head_dim,
        intermediate_size=model.mlp_hidden,
        max_position_embeddings=model.context,
        rms_norm_eps=model.norm_eps,
        rope_theta=model.rope_base,
        qk_norm=model.qk_norm,
        gated_attention=model.gated_attention,
        softmax_scale=model.softmax_scale,
        residual_multiplier=model.residual_multiplier,
        logit_multiplier=model.logit_multiplier,
        num_routed_experts=model.n_routed_experts if model.is_moe else 0,
        num_experts_per_tok=model.experts_per_token if model.is_moe else 0,
        moe_intermediate_size=model.expert_hidden if model.is_moe else 0,
        shared_expert=model.is_moe and model.moe_shared_expert,
        sqrt_gate=model.moe_sqrt_gate,
        bos_token_id=eot_id,
        eos_token_id=eot_id,
        pad_token_id=eot_id,
        architectures=["HyperpForCausalLM"],
        dtype=dtype,
    )
    config.auto_map = {
        "AutoConfig": "configuration_hyperp.HyperpConfig",
        "AutoModelForCausalLM": "modeling_hyperp.HyperpForCausalLM",
    }
    return config


def _write_config(config, path: Path) -> None:
    values = config.to_dict()
    # Tools that predate transformers 5 (llama.cpp converters, older vLLM) read the RoPE base
    # from the top level; transformers 5 reads rope_parameters.
    rope = values.get("rope_parameters") or {}
    values.setdefault("rope_theta", rope.get("rope_theta"))
    path.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")


def _write_tokenizer(run: LoadedRun, directory: Path) -> list[str]:
    """``tokenizer.json`` that starts every text with the end-of-text id (a new document, as
    in training and in ``hyperp generate``), and its ``tokenizer_config.json``."""
    from tokenizers import Tokenizer
    from tokenizers.processors import TemplateProcessing

    tokenizer = Tokenizer.from_str(run.tokenizer.to_str())
    if run.eot_id is not None:
        tokenizer.post_processor = TemplateProcessing(
            single=f"{EOT_TOKEN} $A",
            pair=f"{EOT_TOKEN} $A {EOT_TOKEN} $B:1",
            special_tokens=[(EOT_TOKEN, run.eot_id)],
        )
    tokenizer.save(str(directory / "tokenizer.json"))
    special = EOT_TOKEN if run.eot_id is not None else None
    settings = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": special,
        "eos_token": special,
        "pad_token": special,
        "model_max_length": run.config.model.context,
        "clean_up_tokenization_spaces": False,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(settings, indent=2) + "\n")
    return ["tokenizer.json", "tokenizer_config.json"]


def _readme(run: LoadedRun, architecture: str, remote: bool, dtype: str) -> str:
    model = run.config.model
    trust = ", trust_remote_code=True" if remote else ""
    if model.is_hf:
        why = (
            "The run trained this Hugging Face model itself; it is saved as transformers saves it."
        )
    elif remote:
        features = []
        if model.gated_attention:
            features.append("gated attention")
        if model.is_moe:
            gates = "SqrtGate" if model.moe_sqrt_gate else "softmax gates"
            shared = " and a shared expert" if model.moe_shared_expert else ""
            features.append(f"MoE with {gates}{shared}")
        why = (
            f"No stock `transformers` architecture computes this model ({', '.join(features)}), "
            "so this directory carries `modeling_hyperp.py` and `configuration_hyperp.py`, which "
            "reproduce hyperp's forward exactly. Load it with `trust_remote_code=True`."
        )
    else:
        why = (
            f"The model maps exactly onto the stock `{architecture}`; no remote code is needed. "
            "hyperp's multipliers are folded into the weights: the Depth-muP branch multiplier "
            f"{model.residual_multiplier:.6g} into `o_proj` and `down_proj`, the softmax scale "
            f"{model.softmax_scale:.6g} (stock: 1/sqrt({model.head_dim})) into "
            f"{'the QK-norm query gain' if model.qk_norm else '`q_proj`'}, and the logit "
            f"multiplier {model.logit_multiplier:.6g} into `lm_head`."
        )
    return f"""# hyperp export of `{run.path.name}` (step {run.step})

Architecture: `{architecture}`, weights in {dtype}. {why}

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

path = "."  # this directory
model = AutoModelForCausalLM.from_pretrained(path{trust})
tokenizer = AutoTokenizer.from_pretrained(path{trust})
ids = tokenizer("def main(", return_tensors="pt").input_ids  # starts with <|endoftext|>
print(tokenizer.decode(model.generate(ids, max_new_tokens=50)[0], skip_special_tokens=True))
```

The tokenizer starts every text with `<|endoftext|>`, which preceded every training document.

Shape: depth {model.depth}, width {model.width}, {model.n_heads} query heads and {model.n_kv_heads} KV heads of dimension {model.head_dim}, vocabulary {model.vocab_size}, context {model.context}.
"""


# ----- the export --------------------------------------------------------------------------------


def export_run(
    run_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    step: int | None = None,
    dtype: str = "fp32",
    max_shard_size: int | str = "5GB",
    overwrite: bool = False,
) -> ExportResult:
    """Write a Hugging Face model directory for a run (see the module docstring).

    The directory is assembled beside ``out_dir`` and moved into place when complete; an
    existing non-empty ``out_dir`` is replaced only with ``overwrite``.
    """
    _require_hf()
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ValueError(f"{out} exists and is not empty; choose another --out or pass --overwrite")
    run = load_run(run_dir, step=step, device="cpu")
    model = run.config.model
    state = {name: tensor.float() for name, tensor in run.model.state_dict().items()}
    architecture = type(run.model.hf).__name__ if model.is_hf else stock_architecture(model)
    remote = architecture is None
    torch_dtype = "float32" if dtype == "fp32" else "bfloat16"
    if model.is_hf:  # the model itself, as transformers saves it
        weights, config = {}, None
    elif remote:
        architecture = "HyperpForCausalLM"
        weights = _remote_weights(state)
        config = _remote_config(model, run.eot_id, torch_dtype)
    else:
        weights = _stock_weights(model, state)
        config = _stock_config(architecture, model, run.eot_id, torch_dtype)
    weights = {name: tensor.to(DTYPES[dtype]) for name, tensor in weights.items()}

    from transformers import GenerationConfig

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        if model.is_hf:
            files = _write_hf_model(run, staging, DTYPES[dtype], max_shard_size)
        else:
            files = _write_weights(weights, staging, max_shard_size)
            _write_config(config, staging / "config.json")
        GenerationConfig(
            bos_token_id=run.eot_id, eos_token_id=run.eot_id, pad_token_id=run.eot_id
        ).save_pretrained(staging)
        files += ["config.json", "generation_config.json", *_write_tokenizer(run, staging)]
        files = list(dict.fromkeys(files))
        if remote:
            for name in _REMOTE_FILES:
                shutil.copyfile(_TEMPLATE / name, staging / name)
            files += list(_REMOTE_FILES)
        (staging / "README.md").write_text(_readme(run, architecture, remote, dtype))
        files.append("README.md")
        give_usual_modes(staging)
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        os.replace(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    keep_checkpoint(run.path, run.step, f"exported to {out}")
    return ExportResult(out, architecture, remote, run.step, tuple(files), stock_blockers(model))
