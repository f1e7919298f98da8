"""Loss, perplexity and bits per byte of a run on text (``hyperp eval --data``).

The text is a prepared directory (its validation split by default) or raw text files, which
are tokenized exactly as ``hyperp prepare`` would, with the run's tokenizer: each document
preceded by the end-of-text id. The token stream is cut into consecutive blocks of the
model's context; every token after the first is predicted once, and a short last block is
predicted from a whole context of the tokens before it (as lm-eval's rolling windows do). Bits per byte divide the
summed loss (in bits) by the UTF-8 bytes of the predicted tokens, so runs with different
tokenizers compare on the same text.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from hyperp.serve.run import LoadedRun

__all__ = ["TextEvaluation", "evaluate_text", "token_byte_lengths"]


@dataclass(frozen=True)
class TextEvaluation:
    loss: float  # mean cross-entropy per predicted token, nats
    perplexity: float
    bits_per_byte: float
    tokens: int  # predicted tokens
    bytes: int  # UTF-8 bytes of the predicted tokens
    data: str
    split: str
    run: str
    step: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def token_byte_lengths(tokenizer, size: int) -> np.ndarray:
    """UTF-8 bytes each token id stands for (0 for special tokens), for ids below ``size``.

    Byte-level BPE maps every byte to one character of a token's string, so the string's
    length is its byte count; other tokenizers are measured by decoding each token alone.
    """
    spec = json.loads(tokenizer.to_str())
    special = {item["id"] for item in spec.get("added_tokens", []) if item.get("special")}
    byte_level = (spec.get("decoder") or {}).get("type") == "ByteLevel"
    lengths = np.zeros(size, dtype=np.int64)
    for token_id in range(min(size, tokenizer.get_vocab_size(with_added_tokens=True))):
        if token_id in special:
            continue
        if byte_level:
            token = tokenizer.id_to_token(token_id)
            lengths[token_id] = len(token) if token is not None else 0
        else:
            lengths[token_id] = len(tokenizer.decode([token_id]).encode("utf-8"))
    return lengths


def _open_tokens(run: LoadedRun, paths: Sequence[str | os.PathLike[str]], split: str, workdir):
    """The token source to evaluate: a prepared directory's split, or the given raw text
    tokenized into ``workdir``."""
    from hyperp.data import load_tokenizer_file, open_corpus, prepare

    single = Path(paths[0]) if len(paths) == 1 else None
    if single is not None and (single / "meta.json").is_file():
        corpus = open_corpus(single)
        if corpus.tokenizer_path is None or (
            load_tokenizer_file(corpus.tokenizer_path).to_str() != run.tokenizer.to_str()
        ):
            raise ValueError(
                f"{single} was prepared with a different tokenizer than the run's; pass the raw "
                f"text instead, or prepare it with --tokenizer {run.tokenizer_path}"
            )
        source = corpus.val if split == "val" else corpus.train
        if len(source) < 2:
            raise ValueError(f"{single} has no {split} split; use --split train")
        return source, split
    corpus_dir = prepare(
        list(paths),
        Path(workdir) / "tokens",
        tokenizer=run.tokenizer_path,
        val_fraction=0.0,
        command="hyperp eval",
    )
    return open_corpus(corpus_dir, verify="never").train, "all"


@torch.no_grad()
def evaluate_text(
    run: LoadedRun,
    paths: Sequence[str | os.PathLike[str]],
    *,
    split: str = "val",
    batch_size: int = 8,
    max_tokens: int | None = None,
    progress: bool = False,
) -> TextEvaluation:
    """Evaluate ``run.model`` on a prepared directory (its ``split``) or on raw text files.

    ``max_tokens`` caps the predicted tokens (the first ones of the stream).
    """
    from tqdm import tqdm

    if split not in ("val", "train"):
        raise ValueError(f"split must be 'val' or 'train', not {split!r}")
    if not paths:
        raise ValueError("give a prepared directory or text files to evaluate on")
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    context = run.config.model.context
    byte_lengths = torch.from_numpy(token_byte_lengths(run.tokenizer, run.config.model.vocab_size))
    with tempfile.TemporaryDirectory(prefix="hyperp-eval-") as workdir:
        source, used_split = _open_tokens(run, paths, split, workdir)
        predicted = len(source) - 1
        if max_tokens is not None:
            predicted = min(predicted, max_tokens)
        if predicted < 1:
            raise ValueError("nothing to evaluate: the data has fewer than two tokens")
        # (first predicted position, how many): consecutive blocks of one context each.
        blocks = [(s, min(context, predicted - s)) for s in range(0, predicted, context)]
        total_nats, total_bytes = 0.0, 0
        bar = tqdm(total=predicted, unit="tok", disable=not progress, desc="eval", leave=False)
        for first in range(0, len(blocks), batch_size):
            # A short last block still sees a whole context: the tokens before it (as
            # lm-eval's rolling windows do). Windows of one batch share a length.
            group = blocks[first : first + batch_size]
            for size in sorted({min(context, s + n) for s, n in group}, reverse=True):
                rows = [(s, n) for s, n in group if min(context, s + n) == size]
                window = np.stack([np.asarray(source[s + n - size : s + n + 1]) for s, n in rows])
                tokens = torch.from_numpy(window.astype(np.int64)).to(run.device)
                logits = run.model(tokens[:, :-1]).logits.float()
                for row, (_, n) in enumerate(rows):
                    targets = tokens[row, -n:]
                    total_nats += F.cross_entropy(logits[row, -n:], targets, reduction="sum").item()
                    total_bytes += int(byte_lengths[targets.cpu()].sum())
                    bar.update(n)
        bar.close()
    loss = total_nats / predicted
    return TextEvaluation(
        loss=loss,
        perplexity=math.exp(min(loss, 700.0)),
        bits_per_byte=total_nats / math.log(2) / max(total_bytes, 1),
        tokens=predicted,
        bytes=total_bytes,
        data=", ".join(os.fspath(p) for p in paths),
        split=used_split,
        run=str(run.path),
        step=run.step,
    )
