"""``hyperp.load_run``: a trained run directory as a model, its config, tokenizer and metrics.

Weights come from :func:`hyperp.train.checkpoint.load_model_weights` (the newest complete
checkpoint, or a given step), the config from the run's ``config.json``. The tokenizer is the
run's own ``tokenizer.json`` when it has one, else the one of the corpus it was trained on,
found without re-verifying or re-preparing that corpus.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hyperp.data import load_tokenizer_file
from hyperp.data.corpus import corpus_tokenizer
from hyperp.data.preparation import EOT_TOKEN
from hyperp.model import Transformer
from hyperp.model.transformer import rope_tables
from hyperp.serve.metrics import read_metrics
from hyperp.train.checkpoint import load_model_weights
from hyperp.train.config import RunConfig, read_run_config

__all__ = ["LoadedRun", "load_run", "resolve_device", "tokenizer_path"]


@dataclass
class LoadedRun:
    """What :func:`load_run` returns. ``model`` is in eval mode on ``device``."""

    path: Path
    model: Transformer  # or hyperp.hf.CausalLM for a Hugging Face model's run
    config: RunConfig
    tokenizer: Any  # tokenizers.Tokenizer
    tokenizer_path: Path
    step: int
    metrics: list[dict[str, Any]] = field(repr=False)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def eot_id(self) -> int | None:
        """The end-of-text id that precedes every training document (None if the tokenizer
        has no such token)."""
        return self.tokenizer.token_to_id(EOT_TOKEN)

    def encode(self, text: str, *, document_start: bool = True) -> list[int]:
        """Token ids of ``text``; with ``document_start`` preceded by the end-of-text id, as
        every document was in training."""
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        if document_start and self.eot_id is not None:
            ids = [self.eot_id, *ids]
        return ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` or ``"auto"``: CUDA when available, else CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {device!r} asked for, but CUDA is not available; use --device cpu"
        )
    return resolved


def tokenizer_path(run_dir: str | os.PathLike[str], config: RunConfig | None = None) -> Path:
    """The ``tokenizer.json`` of a run: ``RUN/tokenizer.json``, else its corpus's.

    A prepared corpus directory names its tokenizer in ``meta.json``; the built-in corpus is
    looked up in the cache (and prepared there only if it is missing, as training did).
    """
    run_dir = Path(run_dir)
    own = run_dir / "tokenizer.json"
    if own.is_file():
        return own
    config = config or read_run_config(run_dir)
    data_path = config.data.path
    if not data_path:
        from hyperp.data import default_corpus

        corpus_dir = default_corpus(
            vocab_size=config.data.vocab_size, max_bytes=config.data.max_bytes or None
        )
    else:
        corpus_dir = Path(data_path)
    if (corpus_dir / "meta.json").is_file():
        found = corpus_tokenizer(corpus_dir)  # the corpus reader's rule: a name in that directory
        if found is not None:
            return found
    if data_path and not corpus_dir.exists():
        raise FileNotFoundError(
            f"{run_dir} was trained on {data_path}, which no longer exists, and the run has no "
            f"tokenizer.json of its own; copy the corpus's tokenizer.json into {run_dir}"
        )
    raise FileNotFoundError(
        f"no tokenizer for {run_dir}: its corpus {data_path or corpus_dir} has no tokenizer.json "
        "(llm.c shards use GPT-2's tokenizer, which is not bundled); put the tokenizer.json that "
        f"produced the tokens into {run_dir}"
    )


def _build_model(config: RunConfig, state: dict[str, torch.Tensor], device: torch.device):
    if config.model.is_hf:  # rebuilt from the config the run recorded, never from model.hf
        from hyperp.hf import CausalLM, build_hf_model

        model = CausalLM(build_hf_model(config.model.hf_config))
        _check_fits(model, state)
        model.load_state_dict(state)
        return model.to(device).eval()
    # Allocate without initializing (the checkpoint overwrites every weight), then fill in.
    with torch.device("meta"):
        model = Transformer(config.model)
    model.to_empty(device=device)
    _check_fits(model, state)
    model.load_state_dict(state)
    # The RoPE tables are buffers outside the state dict; compute them as __init__ does.
    cos, sin = rope_tables(config.model.head_dim, config.model.context, config.model.rope_base)
    model.rope_cos.copy_(cos)
    model.rope_sin.copy_(sin)
    return model.eval()


def _check_fits(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    own = set(model.state_dict())
    missing, unexpected = sorted(own - set(state)), sorted(set(state) - own)
    if missing or unexpected:
        raise ValueError(
            f"the checkpoint does not fit the run's model config (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}); was config.json edited after training?"
        )


def load_run(
    path: str | os.PathLike[str],
    step: int | None = None,
    device: str | torch.device | None = None,
) -> LoadedRun:
    """Load a run directory: ``.model`` (eval mode), ``.config``, ``.tokenizer``, ``.step``,
    ``.metrics``. ``step=None`` takes the newest complete checkpoint; ``device=None`` picks
    CUDA when available."""
    run_dir = Path(path)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    config = read_run_config(run_dir)
    state, loaded_step = load_model_weights(run_dir, step)
    model = _build_model(config, state, resolve_device(device))
    tokenizer_file = tokenizer_path(run_dir, config)
    return LoadedRun(
        path=run_dir,
        model=model,
        config=config,
        tokenizer=load_tokenizer_file(tokenizer_file),
        tokenizer_path=tokenizer_file,
        step=loaded_step,
        metrics=read_metrics(run_dir),
    )
