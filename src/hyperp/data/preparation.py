"""``prepare``: text in, packed token shards out (the format is described in ``corpus.py``).

Everything a user can get wrong is checked before the long work starts and before anything is
written: the options, the output directory (``staging.check_output``), the inputs (missing,
binary, special files) and a given tokenizer. Then three passes over the inputs, all in the same
deterministic order:

1. *reading*: cut every document into pieces of at most ``PIECE_CHARS`` characters (at newlines)
   and give each piece a split key, a keyed hash of its text (so the split depends on content and
   seed only, not on file order or parallelism); :func:`choose_validation` picks the pieces held
   out for validation;
2. *tokenizer*: train the byte-level BPE on the training pieces (skipped with ``tokenizer``);
3. *encoding*: encode the pieces in batches with ``Tokenizer.encode_batch`` (which runs on all
   cores) and stream them into the train/val shard writers. They write into a staging directory
   beside ``out``, which replaces ``out`` only when everything, ``meta.json`` last, is written
   (``staging.staged_directory``): a failure or Ctrl-C leaves an earlier preparation as it was.

The split is by text, not by file: a corpus of a few large files (a book, a dump) still gets a
validation set of the size asked for, and documents of very different sizes do not make its
size a lottery. The end-of-text id precedes every document, and every piece whose predecessor in
the document went to the other split, so no seam in the text goes unmarked.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import sys
import time
import warnings
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from hyperp.data.corpus import FORMAT_NAME, FORMAT_VERSION, load_tokenizer_file
from hyperp.data.inputs import DocumentSource, expand_inputs
from hyperp.data.progress import Progress, ProgressMode
from hyperp.data.staging import (
    check_output,
    recover_interrupted_swap,
    staged_directory,
    write_output,
)

__all__ = [
    "DEFAULT_SHARD_TOKENS",
    "EOT_TOKEN",
    "MIN_VAL_TOKENS",
    "MIN_VOCAB_SIZE",
    "PIECE_CHARS",
    "auto_val_fraction",
    "choose_validation",
    "prepare",
    "train_tokenizer",
]

EOT_TOKEN = "<|endoftext|>"
# Byte-level BPE starts from the 256 byte symbols; one more id is the end-of-text token.
MIN_VOCAB_SIZE = 257
# 100M tokens per shard (200 MB as uint16), as the llm.c FineWeb shards.
DEFAULT_SHARD_TOKENS = 100_000_000
# The unit of the train/validation split and of encoding: documents longer than this are cut at
# newlines. 64 Ki characters (~16k tokens) keeps the split fine-grained on a single-file corpus.
PIECE_CHARS = 1 << 16
# The automatic validation share: 1% of the text, at least ~0.5M tokens (2M characters) and at
# most ~10M tokens (40M characters), but never more than 10% of the corpus.
AUTO_VAL_SHARE = 0.01
AUTO_VAL_MIN_CHARS = 2_000_000
AUTO_VAL_MAX_CHARS = 40_000_000
AUTO_VAL_MAX_SHARE = 0.1
# Below this many tokens a validation loss is too noisy to compare runs by: warn.
MIN_VAL_TOKENS = 50_000
# Text handed to one encode_batch call: enough to keep every core busy, little enough that
# Ctrl-C (seen between calls) answers within a second or two.
_BATCH_CHARS = 2 << 20
_BATCH_PIECES = 4096
_COUNT_CHUNK = 1 << 22


def _warn(message: str, depth: int = 3) -> None:
    """A UserWarning attributed to prepare's caller (``depth`` frames up)."""
    warnings.warn(message, UserWarning, stacklevel=depth)


@dataclass
class _SplitWriter:
    """Streams one split's tokens into fixed-size shards in the staging directory."""

    out_dir: Path
    split: str
    dtype: np.dtype
    shard_tokens: int
    eot_id: int
    pending: list[np.ndarray] = field(default_factory=list)
    pending_tokens: int = 0
    shards: list[dict[str, Any]] = field(default_factory=list)
    tokens: int = 0
    documents: int = 0
    pieces: int = 0
    characters: int = 0
    last_piece: int = -2
    last_document: int = -1
    # Token frequencies (for the unigram entropy), counted in chunks: one bincount per piece
    # would cost O(vocab) each.
    counts: np.ndarray | None = None
    uncounted: list[np.ndarray] = field(default_factory=list)
    uncounted_tokens: int = 0

    def add_piece(self, piece: int, document: int, first: bool, ids: list[int], chars: int):
        # The end-of-text id marks every break: a new document, or a gap where the document's
        # previous piece went to the other split.
        needs_eot = first or piece != self.last_piece + 1
        tokens = np.empty(len(ids) + needs_eot, dtype=self.dtype)  # 2 (or 4) bytes per token
        if needs_eot:
            tokens[0] = self.eot_id
        tokens[int(needs_eot) :] = ids
        if self.counts is not None:
            self.uncounted.append(tokens)
            self.uncounted_tokens += len(tokens)
            if self.uncounted_tokens >= _COUNT_CHUNK:
                self._count()
        self.pending.append(tokens)
        self.pending_tokens += len(tokens)
        self.tokens += len(tokens)
        self.pieces += 1
        self.characters += chars
        self.documents += document != self.last_document
        self.last_piece, self.last_document = piece, document
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
        write_output(self.out_dir / name, data)
        self.shards.append(
            {"file": name, "tokens": len(tokens), "sha256": hashlib.sha256(data).hexdigest()}
        )


def _split_key(seed: int, text: str) -> float:
    """A uniform number in [0, 1) fixed by the seed and the piece's text."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8, key=seed.to_bytes(8, "little"))
    return int.from_bytes(digest.digest(), "little") / 2.0**64


def _cut(text: str, size: int = PIECE_CHARS) -> list[str]:
    """Cut a long text at newlines into pieces of about ``size`` characters (at most ``size``
    unless a line is longer)."""
    if len(text) <= size:
        return [text]
    pieces, start = [], 0
    while start < len(text):
        end = min(start + size, len(text))
        if end < len(text):
            newline = text.rfind("\n", start, end)
            if newline > start:
                end = newline + 1
        pieces.append(text[start:end])
        start = end
    return pieces


def _pieces(source: DocumentSource) -> Iterator[tuple[int, bool, str]]:
    """(document index, is the document's first piece, text) for every piece, in order."""
    for document_index, document in enumerate(source.documents()):
        for piece_index, piece in enumerate(_cut(document.text)):
            yield document_index, piece_index == 0, piece


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
    tokenizer.train_from_iterator((piece for text in texts for piece in _cut(text)), trainer)
    return tokenizer


def _check_vocab_size(vocab_size: int) -> None:
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise ValueError(f"--vocab-size must be an integer, not {vocab_size!r}")
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(
            f"vocab size {vocab_size} is too small: a byte-level BPE needs 256 byte tokens plus "
            f"the end-of-text token; use --vocab-size {MIN_VOCAB_SIZE} or more (typical: 8192 to "
            "50257)"
        )
    if vocab_size > 2**31:
        raise ValueError(f"vocab size {vocab_size} is larger than 2^31; use a smaller vocabulary")


def _check_options(
    val_fraction: float | None, shard_tokens: int, seed: int, vocab_size: int, tokenizer
) -> None:
    if val_fraction is not None and (
        isinstance(val_fraction, bool)
        or not isinstance(val_fraction, int | float)
        or not 0.0 <= val_fraction < 1.0
    ):
        raise ValueError(
            f"--val-fraction must be in [0, 1), not {val_fraction!r} (e.g. 0.01; leave it out "
            "for the automatic split)"
        )
    if isinstance(shard_tokens, bool) or not isinstance(shard_tokens, int) or shard_tokens < 1:
        raise ValueError(f"--shard-tokens must be a positive integer, not {shard_tokens!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"--seed must be a non-negative integer, not {seed!r}")
    if tokenizer is None:
        _check_vocab_size(vocab_size)


def auto_val_fraction(total_chars: int) -> float:
    """The validation share used when none is given (see AUTO_VAL_* above)."""
    if total_chars <= 0:
        return AUTO_VAL_SHARE
    target = max(AUTO_VAL_SHARE * total_chars, AUTO_VAL_MIN_CHARS)
    target = min(target, AUTO_VAL_MAX_SHARE * total_chars, AUTO_VAL_MAX_CHARS)
    return target / total_chars


def choose_validation(
    keys: np.ndarray, characters: np.ndarray, val_fraction: float | None
) -> tuple[np.ndarray, float]:
    """The pieces held out for validation (a boolean mask), and the share of text asked for.

    Pieces are taken in the order of their keys (a shuffle fixed by content and seed) until they
    hold ``val_fraction`` of the characters (:func:`auto_val_fraction` when None). When the share
    is positive and there are two or more pieces, at least one piece is held out and at least one
    is left for training.
    """
    keys, characters = np.asarray(keys), np.asarray(characters, dtype=np.int64)
    total = int(characters.sum())
    fraction = auto_val_fraction(total) if val_fraction is None else float(val_fraction)
    is_val = np.zeros(len(keys), dtype=bool)
    if fraction <= 0 or len(keys) < 2:
        return is_val, fraction
    order = np.argsort(keys, kind="stable")
    held = np.cumsum(characters[order])
    count = int(np.searchsorted(held, fraction * total, side="left")) + 1
    is_val[order[: min(max(count, 1), len(keys) - 1)]] = True
    return is_val, fraction


@dataclass
class _Scan:
    """What the reading pass learns: one entry per piece, in input order."""

    keys: array = field(default_factory=lambda: array("d"))
    characters: array = field(default_factory=lambda: array("q"))
    documents: int = 0
    replaced_bytes: int = 0


def _estimated_input_size(files: list[Path]) -> int:
    """Bytes of text to read: file sizes, and for .gz the size recorded in its last 4 bytes."""
    total = 0
    for path in files:
        size = path.stat().st_size
        if path.name.lower().endswith(".gz") and size >= 4:
            with open(path, "rb") as handle:
                handle.seek(-4, os.SEEK_END)
                size = int.from_bytes(handle.read(4), "little")  # modulo 4 GiB; a progress hint
        total += size
    return total


def _scan(source: DocumentSource, seed: int, progress: Progress) -> _Scan:
    scan = _Scan()
    for document in source.documents():
        scan.documents += 1
        scan.replaced_bytes += document.replaced_bytes
        for piece in _cut(document.text):
            scan.keys.append(_split_key(seed, piece))
            scan.characters.append(len(piece))
        progress.update(len(document.text))
    return scan


def _checked_pieces(
    source: DocumentSource, characters: array
) -> Iterator[tuple[int, int, bool, str]]:
    """(piece index, document index, first, text), checking the inputs did not change."""
    count = 0
    for index, (document, first, text) in enumerate(_pieces(source)):
        if index >= len(characters) or len(text) != characters[index]:
            raise ValueError("the inputs changed while being prepared; run prepare again")
        count += 1
        yield index, document, first, text
    if count != len(characters):
        raise ValueError("the inputs changed while being prepared; run prepare again")


def _encode_batches(
    pieces: Iterator[tuple[int, int, bool, str]], tokenizer
) -> Iterator[tuple[tuple[int, int, bool, str], list[int]]]:
    """Yield each piece with its token ids, in input order, encoding whole batches at once."""
    batch: list[tuple[int, int, bool, str]] = []
    batch_chars = 0

    def encode(batch):
        encodings = tokenizer.encode_batch([item[3] for item in batch], add_special_tokens=False)
        return zip(batch, (encoding.ids for encoding in encodings))

    for item in pieces:
        batch.append(item)
        batch_chars += len(item[3])
        if batch_chars >= _BATCH_CHARS or len(batch) >= _BATCH_PIECES:
            yield from encode(batch)
            batch, batch_chars = [], 0
    if batch:
        yield from encode(batch)


def _entropy_nats(counts: np.ndarray) -> float:
    total = counts.sum()
    if total == 0:
        return 0.0
    probabilities = counts[counts > 0] / total
    return float(-(probabilities * np.log(probabilities)).sum())


def _no_input_error(inputs, hf_dataset, files: list[Path], binary: list[Path]) -> ValueError:
    if binary and not files:
        names = ", ".join(path.name for path in binary[:3]) + (", ..." if len(binary) > 3 else "")
        return ValueError(
            f"every input file looks binary ({len(binary)} skipped: {names}); pass text, JSONL, "
            "Parquet or .gz files"
        )
    where = ", ".join(map(str, inputs)) or hf_dataset
    return ValueError(
        f"no text found in the inputs ({where}): no readable document has any text; check the "
        "paths and the --jsonl-field / --parquet-column / --hf-field names"
    )


def _small_validation_warning(val_tokens: int, total_tokens: int, fraction: float) -> str:
    needed = fraction * MIN_VAL_TOKENS / max(val_tokens, 1) if val_tokens else None
    if needed is not None and needed < 0.5:
        advice = f"raise --val-fraction to about {max(needed, fraction * 1.1):.2g}"
    else:
        advice = f"add text (the corpus has {total_tokens:,} tokens) or raise --val-fraction"
    return (
        f"the validation split has only {val_tokens:,} tokens, too few to measure a validation "
        f"loss reliably (want {MIN_VAL_TOKENS:,} or more); {advice}"
    )


def _checked_inputs(
    inputs: Sequence[str | os.PathLike], target: Path, hf_dataset: str | None
) -> tuple[list[Path], list[Path]]:
    """The text files to read and the binary files skipped (with a warning); refuses no input."""
    files, binary = expand_inputs(list(inputs))
    # An output directory inside an input directory must not feed on itself when re-run.
    inside_output = target.resolve()
    files = [path for path in files if inside_output not in path.parents]
    binary = [path for path in binary if inside_output not in path.resolve().parents]
    if binary:
        names = ", ".join(str(path) for path in binary[:5]) + (", ..." if len(binary) > 5 else "")
        _warn(f"skipped {len(binary)} binary file{'s' * (len(binary) > 1)} ({names})", depth=4)
    if not files and hf_dataset is None:
        raise _no_input_error(inputs, hf_dataset, files, binary)
    return files, binary


def _train_on_training_pieces(
    source: DocumentSource, scan: _Scan, is_val: np.ndarray, vocab_size: int, progress: Progress
):
    def training_texts() -> Iterator[str]:
        for index, _, _, text in _checked_pieces(source, scan.characters):
            if not is_val[index]:
                progress.update(len(text))
                yield text

    return train_tokenizer(training_texts(), vocab_size)


def _encode_into(
    staging: Path,
    source: DocumentSource,
    scan: _Scan,
    is_val: np.ndarray,
    tokenizer,
    shard_tokens: int,
    progress: Progress,
) -> dict[str, _SplitWriter]:
    """Encode every piece and write the train and val shards into ``staging``."""
    if hasattr(tokenizer, "encode_special_tokens"):
        # The literal text "<|endoftext|>" inside a document stays text; only we insert the id.
        tokenizer.encode_special_tokens = True
    if tokenizer.token_to_id(EOT_TOKEN) is None:
        tokenizer.add_special_tokens([EOT_TOKEN])  # documents need a separator id
    vocab = tokenizer.get_vocab_size()
    dtype = np.dtype("<u2") if vocab <= 2**16 else np.dtype("<u4")
    eot_id = tokenizer.token_to_id(EOT_TOKEN)
    writers = {
        split: _SplitWriter(staging, split, dtype, shard_tokens, eot_id)
        for split in ("train", "val")
    }
    writers["train"].counts = np.zeros(vocab, dtype=np.int64)
    pieces = _checked_pieces(source, scan.characters)
    for (index, document, first, text), ids in _encode_batches(pieces, tokenizer):
        writer = writers["val"] if is_val[index] else writers["train"]
        writer.add_piece(index, document, first, ids, len(text))
        progress.update(len(text))
    for writer in writers.values():
        writer.close()
    return writers


def prepare(
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    tokenizer: str | os.PathLike | None = None,
    vocab_size: int = 8192,
    val_fraction: float | None = None,
    seed: int = 0,
    jsonl_field: str = "text",
    parquet_column: str = "text",
    hf_dataset: str | None = None,
    hf_split: str = "train",
    hf_field: str = "text",
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    max_bytes: int | None = None,
    command: str | None = None,
    log: Callable[[str], None] | None = None,
    progress: ProgressMode = "lines",
) -> Path:
    """Tokenize text into a shard directory that :func:`hyperp.data.open_corpus` reads.

    ``inputs``: plain-text files, directories (walked recursively, hidden files skipped), glob
    patterns, ``.jsonl`` files (text in ``jsonl_field``), ``.parquet`` files (text in
    ``parquet_column``, needs pyarrow), and gzip-compressed text or JSONL (``.txt.gz``,
    ``.jsonl.gz``); binary files are skipped with a warning. ``hf_dataset`` adds a Hugging Face
    dataset by name or local path (``save_to_disk`` copies load offline), split ``hf_split``,
    column ``hf_field``. See :mod:`hyperp.data.inputs` for what counts as a document.

    ``tokenizer``: a ``tokenizer.json`` to use; when None a byte-level BPE of ``vocab_size`` ids
    is trained on the training text (a small corpus may yield fewer ids; meta.json records the
    real size). ``val_fraction``: the share of the text held out for validation, taken as whole
    pieces of at most 64 Ki characters chosen by a keyed hash of their text and ``seed`` (so
    deterministic); None chooses it from the corpus size (:func:`auto_val_fraction`: 1%, at least
    ~0.5M tokens, at most ~10M tokens, never above 10%). A warning names ``--val-fraction`` when
    the validation split ends up below 50,000 tokens. ``shard_tokens`` caps tokens per shard.
    ``max_bytes`` reads the documents in input order only until their text reaches that many
    UTF-8 bytes (a quick look at a large tree); None reads everything.

    ``out_dir`` receives ``tokenizer.json``, ``train_000000.bin``..., ``val_000000.bin``... and
    ``meta.json`` (``format``, ``format_version``, ``dtype``, ``vocab_size``, ``eot_id``,
    ``splits`` with per split ``tokens``, ``documents``, ``pieces``, ``characters`` and ``shards``
    with sizes and sha256; ``replaced_bytes`` (undecodable input bytes replaced by U+FFFD),
    ``unigram_entropy_nats``, ``val_fraction``, ``command``, ``inputs``, timings and counts). It
    is built beside ``out_dir`` and swapped in only when complete: on any error an earlier
    preparation in ``out_dir`` is left as it was. Returns ``out_dir``.

    ``log`` receives progress messages; ``progress`` is ``"lines"`` (a line through ``log`` every
    few seconds), ``"bar"`` (a tqdm bar on stderr) or None.

    Raises ``ValueError`` (or ``FileNotFoundError`` for missing inputs) with a message naming the
    fix, before anything is written, for: bad options, an output that is a file, read-only, or
    holds foreign files, missing/special/only-binary inputs, unreadable tokenizers and inputs
    without text; and for write errors (disk full) while building.
    """
    started = time.perf_counter()
    say = log or (lambda message: None)
    _check_options(val_fraction, shard_tokens, seed, vocab_size, tokenizer)
    if max_bytes is not None and (
        isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1
    ):
        raise ValueError(f"--max-bytes must be a positive integer, not {max_bytes!r}")
    if not inputs and hf_dataset is None:
        raise ValueError(
            "no inputs: pass text/JSONL/Parquet files, directories, globs or --hf-dataset"
        )
    out_path = Path(out_dir)
    # A symlinked output keeps its link: the directory it points to is what gets replaced.
    target = out_path.resolve() if out_path.is_symlink() else out_path
    if recover_interrupted_swap(target):
        say(f"restored {target} from an interrupted earlier prepare")
    check_output(target)
    files, binary = _checked_inputs(inputs, target, hf_dataset)
    given_tokenizer = load_tokenizer_file(tokenizer) if tokenizer is not None else None
    source = DocumentSource(
        files=files,
        jsonl_field=jsonl_field,
        parquet_column=parquet_column,
        hf_dataset=hf_dataset,
        hf_split=hf_split,
        hf_field=hf_field,
        max_bytes=max_bytes,
    )

    # Pass 1: pieces and their split keys; then the split.
    say(f"reading {len(files)} files" + (f" and dataset {hf_dataset}" if hf_dataset else ""))
    estimate = _estimated_input_size(files)
    estimate = estimate if max_bytes is None else min(estimate, max_bytes)
    with Progress("reading", estimate, mode=progress, log=log) as reading:
        scan = _scan(source, seed, reading)
    if not scan.keys:
        raise _no_input_error(inputs, hf_dataset, [], binary)
    characters = np.frombuffer(scan.characters, dtype=np.int64)
    is_val, fraction = choose_validation(np.frombuffer(scan.keys), characters, val_fraction)
    total_chars = int(characters.sum())

    # Pass 2: the tokenizer.
    if given_tokenizer is None:
        training_chars = int(characters[~is_val].sum())
        with Progress("tokenizer", training_chars, mode=progress, log=log) as training:
            tok = _train_on_training_pieces(source, scan, is_val, vocab_size, training)
        tokenizer_source = "trained"
    else:
        tok = given_tokenizer
        tokenizer_source = str(Path(tokenizer).resolve())
    first_pass_seconds = time.perf_counter() - started
    say(
        f"{scan.documents} documents in {len(characters)} pieces; tokenizer {tokenizer_source}, "
        f"{tok.get_vocab_size()} ids ({first_pass_seconds:.1f}s)"
    )

    # Pass 3: encode and write, into a staging directory swapped in at the end.
    with staged_directory(target) as staging:
        with Progress("encoding", total_chars, mode=progress, log=log) as encoding:
            writers = _encode_into(staging, source, scan, is_val, tok, shard_tokens, encoding)
        write_output(staging / "tokenizer.json", tok.to_str(pretty=True).encode())
        elapsed = time.perf_counter() - started
        meta = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "dtype": "uint16" if writers["train"].dtype.itemsize == 2 else "uint32",
            "vocab_size": tok.get_vocab_size(),
            "requested_vocab_size": vocab_size if tokenizer is None else None,
            "eot_token": EOT_TOKEN,
            "eot_id": writers["train"].eot_id,
            "tokenizer": "tokenizer.json",
            "tokenizer_source": tokenizer_source,
            "splits": {
                split: {
                    "tokens": writer.tokens,
                    "documents": writer.documents,
                    "pieces": writer.pieces,
                    "characters": writer.characters,
                    "shards": writer.shards,
                }
                for split, writer in writers.items()
            },
            "documents": scan.documents,
            "pieces": len(characters),
            "piece_characters": PIECE_CHARS,
            "input_files": len(files),
            "skipped_binary_files": len(binary),
            "input_characters": total_chars,
            "replaced_bytes": scan.replaced_bytes,
            "unigram_entropy_nats": _entropy_nats(writers["train"].counts),
            "val_fraction": fraction,
            "val_fraction_auto": val_fraction is None,
            "seed": seed,
            "shard_tokens": shard_tokens,
            "inputs": [os.fspath(item) for item in inputs],
            "hf_dataset": hf_dataset,
            "hf_split": hf_split if hf_dataset else None,
            "command": command if command is not None else shlex.join(sys.argv),
            "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
            "prepare_seconds": round(elapsed, 3),
            # Passes 1-2 (reading, split, tokenizer training) and pass 3 (encode, write).
            "tokenizer_seconds": round(first_pass_seconds, 3),
            "encode_seconds": round(elapsed - first_pass_seconds, 3),
        }
        write_output(staging / "meta.json", (json.dumps(meta, indent=2) + "\n").encode())
    val_tokens = writers["val"].tokens
    if fraction > 0 and val_tokens < MIN_VAL_TOKENS:
        total_tokens = val_tokens + writers["train"].tokens
        _warn(_small_validation_warning(val_tokens, total_tokens, fraction))
    say(
        f"wrote {writers['train'].tokens} train / {val_tokens} val tokens "
        f"to {out_path} in {elapsed:.1f}s"
    )
    return out_path
