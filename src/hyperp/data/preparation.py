"""``prepare``: text in, packed token shards out (the format is described in ``corpus.py``).

Two passes over the inputs, both in the same deterministic document order:

1. read every document, give it a split key (a keyed hash of its text, so the split depends on
   content and seed only, not on file order or parallelism), and train the byte-level BPE on the
   training documents (unless a tokenizer is given);
2. encode documents in batches with ``Tokenizer.encode_batch`` (which runs on all cores), prefix
   each with the end-of-text id, and stream them into the train/val shard writers.

``meta.json`` is written last and atomically: a directory is finished iff it has one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from hyperp.data.corpus import FORMAT_NAME, FORMAT_VERSION, VERIFIED_STAMP
from hyperp.data.inputs import Document, DocumentSource, expand_inputs
from hyperp.fileio import atomic_write_bytes, atomic_write_text

__all__ = [
    "DEFAULT_SHARD_TOKENS",
    "EOT_TOKEN",
    "MIN_VOCAB_SIZE",
    "prepare",
    "train_tokenizer",
]

EOT_TOKEN = "<|endoftext|>"
# Byte-level BPE starts from the 256 byte symbols; one more id is the end-of-text token.
MIN_VOCAB_SIZE = 257
# 100M tokens per shard (200 MB as uint16), as the llm.c FineWeb shards.
DEFAULT_SHARD_TOKENS = 100_000_000
# Documents longer than this are encoded in pieces cut at newlines, so that one huge file neither
# serialises the batch onto one core nor needs a single giant encoding.
_PIECE_CHARS = 1 << 20
# Text handed to one encode_batch call: large enough to keep every core busy.
_BATCH_CHARS = 8 << 20
_BATCH_DOCS = 4096
_COUNT_CHUNK = 1 << 22


@dataclass
class _SplitWriter:
    """Streams one split's tokens into fixed-size shards, each written atomically."""

    out_dir: Path
    split: str
    dtype: np.dtype
    shard_tokens: int
    pending: list[np.ndarray] = field(default_factory=list)
    pending_tokens: int = 0
    shards: list[dict[str, Any]] = field(default_factory=list)
    tokens: int = 0
    documents: int = 0
    # Token frequencies (for the unigram entropy), counted in chunks: one bincount per document
    # would cost O(vocab) each.
    counts: np.ndarray | None = None
    uncounted: list[np.ndarray] = field(default_factory=list)
    uncounted_tokens: int = 0

    def add_document(self, ids: np.ndarray) -> None:
        # Held in the shard dtype: a pending shard costs 2 (or 4) bytes per token, not 8.
        ids = ids.astype(self.dtype)
        if self.counts is not None:
            self.uncounted.append(ids)
            self.uncounted_tokens += len(ids)
            if self.uncounted_tokens >= _COUNT_CHUNK:
                self._count()
        self.pending.append(ids)
        self.pending_tokens += len(ids)
        self.tokens += len(ids)
        self.documents += 1
        if self.pending_tokens >= self.shard_tokens:
            self._flush(final=False)

    def close(self) -> None:
        self._flush(final=True)
        if self.counts is not None:
            self._count()

    def _count(self) -> None:
        if self.uncounted:
            joined = np.concatenate(self.uncounted)
            self.counts += np.bincount(joined, minlength=len(self.counts))[: len(self.counts)]
        self.uncounted, self.uncounted_tokens = [], 0

    def _flush(self, *, final: bool) -> None:
        if not self.pending:
            return
        joined = np.concatenate(self.pending)
        start = 0
        while len(joined) - start >= self.shard_tokens:
            self._write(joined[start : start + self.shard_tokens])
            start += self.shard_tokens
        remainder = joined[start:]
        if final and len(remainder):
            self._write(remainder)
            remainder = remainder[:0]
        self.pending = [remainder] if len(remainder) else []
        self.pending_tokens = len(remainder)

    def _write(self, tokens: np.ndarray) -> None:
        name = f"{self.split}_{len(self.shards):06d}.bin"
        data = tokens.astype(self.dtype).tobytes()
        atomic_write_bytes(self.out_dir / name, data)
        self.shards.append(
            {"file": name, "tokens": len(tokens), "sha256": hashlib.sha256(data).hexdigest()}
        )


def _split_key(seed: int, text: str) -> float:
    """A uniform number in [0, 1) fixed by the seed and the document's text."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8, key=seed.to_bytes(8, "little"))
    return int.from_bytes(digest.digest(), "little") / 2.0**64


def _pieces(text: str) -> list[str]:
    """Cut a long text at newlines into pieces of about _PIECE_CHARS characters."""
    if len(text) <= _PIECE_CHARS:
        return [text]
    pieces, start = [], 0
    while start < len(text):
        end = min(start + _PIECE_CHARS, len(text))
        if end < len(text):
            newline = text.rfind("\n", start, end)
            if newline > start:
                end = newline + 1
        pieces.append(text[start:end])
        start = end
    return pieces


def train_tokenizer(texts: Iterator[str], vocab_size: int):
    """Train a byte-level BPE (HF ``tokenizers``) with ``<|endoftext|>`` as its one special token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    _check_vocab_size(vocab_size)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOT_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator((piece for text in texts for piece in _pieces(text)), trainer)
    return tokenizer


def _check_vocab_size(vocab_size: int) -> None:
    if not isinstance(vocab_size, int) or vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(
            f"vocab size {vocab_size} is too small: a byte-level BPE needs 256 byte tokens plus "
            f"the end-of-text token; use --vocab-size {MIN_VOCAB_SIZE} or more (typical: 8192 to "
            "50257)"
        )
    if vocab_size > 2**31:
        raise ValueError(f"vocab size {vocab_size} is larger than 2^31; use a smaller vocabulary")


def _load_tokenizer(path: Path):
    from tokenizers import Tokenizer

    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file {path} does not exist; pass a tokenizer.json")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as error:  # tokenizers raises a plain Exception on parse errors
        raise ValueError(f"{path} is not a Hugging Face tokenizer.json file ({error})") from None
    if tokenizer.token_to_id(EOT_TOKEN) is None:
        # Documents need a separator id; a tokenizer without one gets it appended.
        tokenizer.add_special_tokens([EOT_TOKEN])
    return tokenizer


def _prepare_out_dir(out_dir: Path) -> None:
    """Create ``out_dir`` or clear an earlier preparation in it, never foreign files."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"output {out_dir} exists and is not a directory; choose another --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    ours, foreign = [], []
    for entry in out_dir.iterdir():
        name = entry.name
        if (
            name in ("meta.json", "tokenizer.json", VERIFIED_STAMP)
            or (name.endswith(".bin") and name.startswith(("train_", "val_")))
            or (name.startswith(".") and name.endswith(".tmp"))
        ):
            ours.append(entry)
        else:
            foreign.append(name)
    if foreign:
        raise ValueError(
            f"output directory {out_dir} holds files that prepare did not write "
            f"({', '.join(sorted(foreign)[:5])}); choose an empty or new --out directory"
        )
    # meta.json goes first, so that an interrupted re-run never looks finished.
    (out_dir / "meta.json").unlink(missing_ok=True)
    for entry in ours:
        if entry.is_file():
            entry.unlink()


def _entropy_nats(counts: np.ndarray) -> float:
    total = counts.sum()
    if total == 0:
        return 0.0
    probabilities = counts[counts > 0] / total
    return float(-(probabilities * np.log(probabilities)).sum())


def _encode_batches(
    documents: Iterator[tuple[int, Document]], tokenizer
) -> Iterator[tuple[int, list[int]]]:
    """Yield (document index, token ids) in input order, encoding whole batches at once."""
    batch: list[tuple[int, Document]] = []
    batch_chars = 0

    def encode(batch):
        pieces, owners = [], []
        for position, (_, document) in enumerate(batch):
            for piece in _pieces(document.text):
                pieces.append(piece)
                owners.append(position)
        encodings = tokenizer.encode_batch(pieces, add_special_tokens=False)
        ids: list[list[int]] = [[] for _ in batch]
        for owner, encoding in zip(owners, encodings):
            ids[owner].extend(encoding.ids)
        for (index, _), document_ids in zip(batch, ids):
            yield index, document_ids

    for item in documents:
        batch.append(item)
        batch_chars += len(item[1].text)
        if batch_chars >= _BATCH_CHARS or len(batch) >= _BATCH_DOCS:
            yield from encode(batch)
            batch, batch_chars = [], 0
    if batch:
        yield from encode(batch)


def prepare(
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    tokenizer: str | os.PathLike | None = None,
    vocab_size: int = 8192,
    val_fraction: float = 0.005,
    seed: int = 0,
    jsonl_field: str = "text",
    parquet_column: str = "text",
    hf_dataset: str | None = None,
    hf_split: str = "train",
    hf_field: str = "text",
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    command: str | None = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Tokenize text into a shard directory that :func:`hyperp.data.open_corpus` reads.

    ``inputs``: plain-text files, directories (walked recursively, hidden and binary files
    skipped), glob patterns, ``.jsonl`` files (text in ``jsonl_field``) and ``.parquet`` files
    (text in ``parquet_column``, needs pyarrow); ``hf_dataset`` adds a Hugging Face dataset by
    name or local path (``save_to_disk`` copies load offline), split ``hf_split``, column
    ``hf_field``. See :mod:`hyperp.data.inputs` for what counts as a document.

    ``tokenizer``: a ``tokenizer.json`` to use; when None a byte-level BPE of ``vocab_size`` ids
    is trained on the training documents (a small corpus may yield fewer ids; meta.json records
    the real size). ``val_fraction`` of the documents (chosen by a keyed hash of their text and
    ``seed``, so deterministic; at least one document each way when there are two or more) form
    the validation split. ``shard_tokens`` caps tokens per shard file.

    Writes ``out_dir/tokenizer.json``, ``train_000000.bin``..., ``val_000000.bin``... and,
    last and atomically, ``meta.json`` with: ``format``, ``format_version``, ``dtype``,
    ``vocab_size``, ``eot_id``, ``eot_token``, ``splits`` (per split ``tokens``, ``documents``
    and ``shards`` with sizes and sha256), ``replaced_bytes`` (undecodable input bytes replaced by
    U+FFFD), ``unigram_entropy_nats`` (entropy of the train split's token frequencies),
    ``command``, ``inputs``, ``seed``, ``val_fraction``, timing and counts. Returns ``out_dir``.

    Raises ``ValueError`` for empty input, a vocabulary below 257, a bad ``val_fraction`` or an
    output directory holding foreign files; ``FileNotFoundError`` for missing inputs.
    """
    started = time.perf_counter()
    say = log or (lambda message: None)
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val fraction {val_fraction} must be in [0, 1), e.g. 0.005")
    if not isinstance(shard_tokens, int) or shard_tokens < 1:
        raise ValueError(f"shard_tokens must be a positive integer, not {shard_tokens!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, not {seed!r}")
    if tokenizer is None:
        _check_vocab_size(vocab_size)
    if not inputs and hf_dataset is None:
        raise ValueError(
            "no inputs: pass text/JSONL/Parquet files, directories, globs or --hf-dataset"
        )
    out_path = Path(out_dir)
    files, skipped_binary = expand_inputs(list(inputs))
    # An output directory inside an input directory must not feed on itself when re-run.
    inside_output = out_path.resolve()
    files = [path for path in files if inside_output not in path.parents]
    source = DocumentSource(
        files=files,
        jsonl_field=jsonl_field,
        parquet_column=parquet_column,
        hf_dataset=hf_dataset,
        hf_split=hf_split,
        hf_field=hf_field,
    )
    _prepare_out_dir(out_path)

    # Pass 1: split keys (and tokenizer training on the documents that will be training data).
    keys: list[float] = []
    input_chars = 0

    def training_texts() -> Iterator[str]:
        nonlocal input_chars
        for document in source.documents():
            key = _split_key(seed, document.text)
            keys.append(key)
            input_chars += len(document.text)
            if key >= val_fraction:
                yield document.text

    say(f"reading {len(files)} files" + (f" and dataset {hf_dataset}" if hf_dataset else ""))
    if tokenizer is None:
        tok = train_tokenizer(training_texts(), vocab_size)
        tokenizer_source = "trained"
    else:
        for _ in training_texts():
            pass
        tok = _load_tokenizer(Path(tokenizer))
        tokenizer_source = str(Path(tokenizer).resolve())
    if not keys:
        where = ", ".join(map(str, inputs)) or hf_dataset
        raise ValueError(
            f"no text found in the inputs ({where}): every document is empty; check the paths "
            "and the --jsonl-field / --parquet-column / --hf-field names"
        )
    key_array = np.array(keys)
    is_val = key_array < val_fraction
    if len(keys) >= 2 and val_fraction > 0:
        # Tiny corpora: keep at least one document on each side.
        if not is_val.any():
            is_val[int(np.argmin(key_array))] = True
        if is_val.all():
            is_val[int(np.argmax(key_array))] = False
    first_pass_seconds = time.perf_counter() - started
    say(
        f"{len(keys)} documents; tokenizer {tokenizer_source}, {tok.get_vocab_size()} ids "
        f"({first_pass_seconds:.1f}s)"
    )

    # Pass 2: encode and write.
    if hasattr(tok, "encode_special_tokens"):
        # The literal text "<|endoftext|>" inside a document stays text; only we insert the id.
        tok.encode_special_tokens = True
    eot_id = tok.token_to_id(EOT_TOKEN)
    final_vocab = tok.get_vocab_size()
    dtype = np.dtype("<u2") if final_vocab <= 2**16 else np.dtype("<u4")
    writers = {
        split: _SplitWriter(out_path, split, dtype, shard_tokens) for split in ("train", "val")
    }
    writers["train"].counts = np.zeros(final_vocab, dtype=np.int64)
    replaced_bytes = 0
    documents_seen = 0

    def indexed_documents() -> Iterator[tuple[int, Document]]:
        nonlocal replaced_bytes, documents_seen
        for index, document in enumerate(source.documents()):
            replaced_bytes += document.replaced_bytes
            documents_seen += 1
            yield index, document

    for index, ids in _encode_batches(indexed_documents(), tok):
        if index >= len(is_val):
            raise ValueError("the inputs changed while being prepared; run prepare again")
        array = np.empty(len(ids) + 1, dtype=np.int64)
        array[0] = eot_id
        array[1:] = ids
        if is_val[index]:
            writers["val"].add_document(array)
        else:
            writers["train"].add_document(array)
    if documents_seen != len(keys):
        raise ValueError("the inputs changed while being prepared; run prepare again")
    for writer in writers.values():
        writer.close()

    tokenizer_file = out_path / "tokenizer.json"
    atomic_write_text(tokenizer_file, tok.to_str(pretty=True))

    elapsed = time.perf_counter() - started
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "dtype": "uint16" if dtype.itemsize == 2 else "uint32",
        "vocab_size": final_vocab,
        "requested_vocab_size": vocab_size if tokenizer is None else None,
        "eot_token": EOT_TOKEN,
        "eot_id": eot_id,
        "tokenizer": "tokenizer.json",
        "tokenizer_source": tokenizer_source,
        "splits": {
            split: {
                "tokens": writer.tokens,
                "documents": writer.documents,
                "shards": writer.shards,
            }
            for split, writer in writers.items()
        },
        "documents": len(keys),
        "input_files": len(files),
        "skipped_binary_files": skipped_binary,
        "input_characters": input_chars,
        "replaced_bytes": replaced_bytes,
        "unigram_entropy_nats": _entropy_nats(writers["train"].counts),
        "val_fraction": val_fraction,
        "seed": seed,
        "shard_tokens": shard_tokens,
        "inputs": [os.fspath(item) for item in inputs],
        "hf_dataset": hf_dataset,
        "hf_split": hf_split if hf_dataset else None,
        "command": command if command is not None else shlex.join(sys.argv),
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "prepare_seconds": round(elapsed, 3),
        # Pass 1 (read, split keys, tokenizer training) and pass 2 (encode, write).
        "tokenizer_seconds": round(first_pass_seconds, 3),
        "encode_seconds": round(elapsed - first_pass_seconds, 3),
    }
    atomic_write_bytes(out_path / "meta.json", (json.dumps(meta, indent=2) + "\n").encode())
    say(
        f"wrote {writers['train'].tokens} train / {writers['val'].tokens} val tokens "
        f"to {out_path} in {elapsed:.1f}s"
    )
    return out_path
