"""Opening token corpora: the directories ``hyperp prepare`` writes, and llm.c ``.bin`` shards.

hyperp shard format (``meta.json`` ``"format": "hyperp-shards"``, ``"format_version": 1``)
-----------------------------------------------------------------------------------------
A prepared directory holds::

    tokenizer.json        the HF tokenizers file that produced the ids
    train_000000.bin ...  training tokens
    val_000000.bin ...    validation tokens (absent when val_fraction is 0)
    meta.json             written last, atomically: the directory is finished iff it exists

Each shard is a headerless array of little-endian unsigned integers (``meta["dtype"]``:
``"uint16"`` when every id fits, else ``"uint32"``). A split is the concatenation of its shards in
``meta["splits"][split]["shards"]`` order, each entry ``{"file", "tokens", "sha256"}`` (``file`` a
plain name inside the directory). The end-of-text id ``meta["eot_id"]`` precedes every document,
so a split reads ``EOT doc0 EOT doc1 ...``; it also marks the one other break in the text, where a
long document continues after a piece that went to the other split (see ``preparation.py``).

llm.c / modded-nanogpt shards
-----------------------------
The format of the widely shared pre-tokenized FineWeb shards: a header of 256 little-endian int32
(``header[0]`` = magic 20240520, ``header[1]`` = version 1, ``header[2]`` = number of tokens), then
that many uint16 GPT-2 token ids. ``open_corpus`` accepts a directory of such files or a glob;
files whose name contains ``"val"`` form the validation split, all others the training split
(as in ``fineweb_val_000000.bin`` / ``fineweb_train_000001.bin``). Their vocabulary is GPT-2's
(50257, end-of-text id 50256) unless ``vocab_size`` is given, which must exceed the largest id in
the shards.

Verification
------------
``open_corpus`` checks every shard's size on every open, and reads each shard in full once: the
sha256 listed in meta.json (prepared directories) and the largest token id (both formats). The
result is remembered and trusted while a cheap fingerprint of the shard matches (see
``stamps.py``), so later opens of a multi-GB corpus read a few blocks per shard, not the corpus.
Every file here is read as JSON or as raw integers: nothing in a data directory can run code.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from hyperp.data.inputs import one_line
from hyperp.data.stamps import VerificationRecords
from hyperp.fileio import atomic_write_bytes

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "LLMC_HEADER_INTS",
    "LLMC_MAGIC",
    "LLMC_VERSION",
    "Corpus",
    "TokenSource",
    "corpus_tokenizer",
    "largest_id",
    "load_tokenizer_file",
    "open_corpus",
    "sha256_file",
    "write_llmc_shard",
]

FORMAT_NAME = "hyperp-shards"
FORMAT_VERSION = 1
LLMC_MAGIC = 20240520
LLMC_VERSION = 1
LLMC_HEADER_INTS = 256
LLMC_HEADER_BYTES = LLMC_HEADER_INTS * 4
GPT2_VOCAB_SIZE = 50257
GPT2_EOT_ID = 50256
_DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}
_HASH_CHUNK = 1 << 22

Verify = Literal["once", "always", "never"]


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def largest_id(tokens: np.ndarray) -> int:
    """The largest token id in ``tokens`` (a memory map is read through once), -1 when empty."""
    return int(tokens.max()) if tokens.size else -1


def load_tokenizer_file(path: str | os.PathLike):
    """A ``tokenizers.Tokenizer`` from a tokenizer.json file, with one-line errors.

    HF tokenizers parses the file as JSON into Rust structures: a tokenizer file cannot run code.
    """
    from tokenizers import Tokenizer

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"tokenizer file {path} does not exist; pass a tokenizer.json")
    if not path.is_file():
        raise ValueError(f"tokenizer file {path} is not a file; pass a tokenizer.json")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as error:  # tokenizers raises a plain Exception on parse errors
        reason = one_line(error)[:200]
        raise ValueError(
            f"{path} is not a Hugging Face tokenizer.json file ({reason}); pass the tokenizer.json "
            "that `tokenizers` or `transformers` saved"
        ) from None


def _check_vocab_size(vocab_size: int | None) -> None:
    if vocab_size is None:
        return
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int | np.integer):
        raise ValueError(
            f"vocab_size must be a positive integer (--model.vocab_size), not {vocab_size!r}"
        )
    if vocab_size < 1:
        raise ValueError(
            f"vocab_size must be a positive integer (--model.vocab_size), not {vocab_size}"
        )


class TokenSource:
    """One split of a corpus: the concatenation of its memory-mapped shards.

    ``len(source)`` is the number of tokens; ``source[a:b]`` returns those tokens as a numpy array
    (copied, in the shards' dtype), crossing shard boundaries as needed; ``source[i]`` one token.
    ``gather_windows`` is the fast path the loader uses.
    """

    def __init__(self, shards: Sequence[np.ndarray], names: Sequence[str]):
        if len(shards) != len(names):
            raise ValueError("one name per shard is needed")
        self.shards: list[np.ndarray] = list(shards)
        self.names: list[str] = list(names)
        lengths = np.array([len(shard) for shard in self.shards], dtype=np.int64)
        # offsets[i] is the position of shard i's first token in the concatenated split.
        self.offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __repr__(self) -> str:
        return f"TokenSource(tokens={len(self)}, shards={len(self.shards)})"

    @property
    def dtype(self) -> np.dtype:
        return self.shards[0].dtype if self.shards else np.dtype("<u2")

    def __getitem__(self, index: int | slice) -> np.ndarray | int:
        total = len(self)
        if isinstance(index, slice):
            start, stop, step = index.indices(total)
            if step != 1:
                raise ValueError("token sources support contiguous slices only (step 1)")
            if stop <= start:
                return np.empty(0, dtype=self.dtype)
            first = int(np.searchsorted(self.offsets, start, side="right")) - 1
            parts = []
            shard_index = first
            while shard_index < len(self.shards) and self.offsets[shard_index] < stop:
                base = int(self.offsets[shard_index])
                shard = self.shards[shard_index]
                parts.append(np.asarray(shard[max(start - base, 0) : min(stop - base, len(shard))]))
                shard_index += 1
            return np.concatenate(parts) if len(parts) > 1 else parts[0].copy()
        position = int(index)
        if position < 0:
            position += total
        if not 0 <= position < total:
            raise IndexError(f"token index {index} out of range for {total} tokens")
        shard_index = int(np.searchsorted(self.offsets, position, side="right")) - 1
        return int(self.shards[shard_index][position - self.offsets[shard_index]])

    def _windows_per_shard(self, length: int) -> np.ndarray:
        lengths = np.diff(self.offsets)
        return np.maximum(lengths - length + 1, 0)

    def count_windows(self, length: int) -> int:
        """Number of windows of ``length`` tokens that lie inside one shard."""
        return int(self._windows_per_shard(length).sum())

    def gather_windows(self, window_indices: np.ndarray, length: int) -> np.ndarray:
        """Tokens of the given windows as an int64 array ``(len(window_indices), length)``.

        Window ``w`` (``0 <= w < count_windows(length)``) is the ``w``-th window of ``length``
        tokens when all windows that lie inside a single shard are listed shard by shard. Windows
        do not cross shard boundaries, which keeps the gather a single fancy index per shard.
        """
        window_indices = np.asarray(window_indices, dtype=np.int64)
        per_shard = self._windows_per_shard(length)
        first_window = np.concatenate([[0], np.cumsum(per_shard)])
        if window_indices.size and (
            window_indices.min() < 0 or window_indices.max() >= first_window[-1]
        ):
            raise IndexError(f"window index out of range for {first_window[-1]} windows")
        shard_of = np.searchsorted(first_window, window_indices, side="right") - 1
        start_in_shard = window_indices - first_window[shard_of]
        offsets = np.arange(length, dtype=np.int64)
        out = np.empty((len(window_indices), length), dtype=np.int64)
        for shard_index in np.unique(shard_of):
            rows = np.flatnonzero(shard_of == shard_index)
            positions = start_in_shard[rows, None] + offsets
            out[rows] = self.shards[shard_index][positions]
        return out


@dataclass
class Corpus:
    """A validated, memory-mapped token corpus (see :func:`open_corpus`).

    Attributes: ``train`` and ``val`` (:class:`TokenSource`; ``val`` may be empty),
    ``vocab_size`` (embedding rows a model needs), ``eot_id`` (end-of-text id or None),
    ``meta`` (the directory's meta.json, or a synthesized dict for llm.c shards),
    ``tokenizer_path`` (``tokenizer.json`` or None), ``path`` and ``format``
    (``"hyperp-shards"`` or ``"llm.c"``).
    """

    path: Path
    format: str
    train: TokenSource
    val: TokenSource
    vocab_size: int
    eot_id: int | None
    meta: dict[str, Any] = field(default_factory=dict, repr=False)
    tokenizer_path: Path | None = None

    def load_tokenizer(self):
        """The corpus's ``tokenizers.Tokenizer`` (to decode samples); ValueError if it has none."""
        if self.tokenizer_path is None:
            raise ValueError(
                f"corpus {self.path} has no tokenizer.json (llm.c shards use GPT-2's tokenizer, "
                "which is not bundled); decode with that tokenizer yourself"
            )
        return load_tokenizer_file(self.tokenizer_path)


def _memmap(path: Path, dtype: np.dtype, offset: int, count: int) -> np.ndarray:
    if count == 0:
        return np.empty(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=(count,))


def _plain_name(name: object) -> bool:
    """A file name that stays inside its directory (meta.json must not point elsewhere)."""
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and Path(name).name == name
        and not any(char in name for char in "/\\\0")
    )


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _read_meta(directory: Path) -> dict[str, Any]:
    """meta.json, parsed as JSON and checked field by field (it may come from anywhere)."""
    meta_path = directory / "meta.json"
    rerun = f"re-create it with `hyperp prepare ... --out {directory}`"
    try:
        meta = json.loads(meta_path.read_bytes())
    except (ValueError, RecursionError) as error:  # bad syntax, not UTF-8, absurdly nested
        reason = error.msg if isinstance(error, json.JSONDecodeError) else type(error).__name__
        raise ValueError(f"{meta_path} is not valid JSON ({reason}); {rerun}") from None
    except OSError as error:
        raise ValueError(f"cannot read {meta_path}: {error.strerror}; {rerun}") from None

    def malformed(what: str) -> ValueError:
        return ValueError(f"{meta_path} is malformed ({what}); {rerun}")

    if not isinstance(meta, dict):
        raise malformed(f"expected a JSON object, found {type(meta).__name__}")
    if meta.get("format") != FORMAT_NAME:
        raise ValueError(f"{meta_path} is not a hyperp shard directory (no format {FORMAT_NAME!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{meta_path} has format_version {meta.get('format_version')}, this hyperp reads "
            f"{FORMAT_VERSION}; {rerun}"
        )
    if meta.get("dtype") not in _DTYPES:
        raise ValueError(f"{meta_path}: unknown dtype {meta.get('dtype')!r}; {rerun}")
    vocab_size = meta.get("vocab_size")
    if not _is_count(vocab_size) or vocab_size == 0:
        raise malformed(f"vocab_size {vocab_size!r} is not a positive integer")
    eot_id = meta.get("eot_id")
    if eot_id is not None and not (_is_count(eot_id) and eot_id < vocab_size):
        raise malformed(f"eot_id {eot_id!r} is not an id below vocab_size {vocab_size}")
    if not _plain_name(meta.get("tokenizer", "tokenizer.json")):
        raise malformed(f"tokenizer {meta.get('tokenizer')!r} is not a plain file name")
    splits = meta.get("splits", {})
    for split in ("train", "val"):
        split_meta = splits.get(split, {}) if isinstance(splits, dict) else None
        entries = split_meta.get("shards", []) if isinstance(split_meta, dict) else None
        if not isinstance(entries, list):
            raise malformed(f"splits.{split}.shards is not a list")
        for entry in entries:
            if not isinstance(entry, dict):
                raise malformed(f"a {split} shard entry is {type(entry).__name__}, not an object")
            if not _plain_name(entry.get("file")):
                raise malformed(f"shard file {entry.get('file')!r} is not a plain file name")
            if not _is_count(entry.get("tokens")):
                raise malformed(f"shard {entry['file']} has tokens {entry.get('tokens')!r}")
            digest = entry.get("sha256")
            if not (isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)):
                raise malformed(f"shard {entry['file']} has no valid sha256")
    return meta


def _check_prepared_shard(
    shard_path: Path, entry: dict, dtype: np.dtype, verify: Verify, records, rerun: str
) -> int | None:
    """Check one listed shard's size, and (unless ``verify == "never"``) its sha256 and ids.

    Returns its largest id, or None when it was not read."""
    if not shard_path.is_file():
        raise FileNotFoundError(f"shard {shard_path} listed in meta.json is missing; {rerun}")
    info = shard_path.stat()
    expected = entry["tokens"] * dtype.itemsize
    if info.st_size != expected:
        raise ValueError(
            f"shard {shard_path} is truncated or corrupt: {info.st_size} bytes, meta.json says "
            f"{entry['tokens']} {dtype.name} tokens = {expected} bytes; {rerun}"
        )
    if verify == "never":
        return None
    record = records.lookup(shard_path, info) if records is not None else None
    if record and record.get("sha256") == entry["sha256"] and _is_count(record.get("largest_id")):
        return record["largest_id"]
    actual = sha256_file(shard_path)
    if actual != entry["sha256"]:
        raise ValueError(
            f"shard {shard_path} is corrupt: sha256 {actual[:16]}... does not match meta.json "
            f"({entry['sha256'][:16]}...); {rerun}"
        )
    largest = largest_id(_memmap(shard_path, dtype, 0, entry["tokens"]))
    if records is not None:
        records.remember(shard_path, info, sha256=actual, largest_id=largest)
    return largest


def _open_prepared(directory: Path, verify: Verify, vocab_size: int | None) -> Corpus:
    meta = _read_meta(directory)
    rerun = f"re-create it with `hyperp prepare ... --out {directory}`"
    if vocab_size is not None and vocab_size < meta["vocab_size"]:
        raise ValueError(
            f"--model.vocab_size {vocab_size} is smaller than the vocabulary of {directory} "
            f"({meta['vocab_size']} ids, its tokenizer's); use --model.vocab_size "
            f"{meta['vocab_size']} or more, or leave it unset"
        )
    dtype = _DTYPES[meta["dtype"]]
    records = VerificationRecords(directory) if verify == "once" else None
    splits: dict[str, TokenSource] = {}
    for split in ("train", "val"):
        entries = meta.get("splits", {}).get(split, {}).get("shards", [])
        arrays, names = [], []
        for entry in entries:
            shard_path = directory / entry["file"]
            largest = _check_prepared_shard(shard_path, entry, dtype, verify, records, rerun)
            if largest is not None and largest >= meta["vocab_size"]:
                raise ValueError(
                    f"shard {shard_path} holds id {largest}, beyond meta.json's vocab_size "
                    f"{meta['vocab_size']}; {rerun}"
                )
            arrays.append(_memmap(shard_path, dtype, 0, entry["tokens"]))
            names.append(entry["file"])
        splits[split] = TokenSource(arrays, names)
    if not splits["train"].shards:
        raise ValueError(f"{directory / 'meta.json'} lists no training shards; {rerun}")
    if records is not None:
        records.save()
    return Corpus(
        path=directory,
        format=FORMAT_NAME,
        train=splits["train"],
        val=splits["val"],
        vocab_size=vocab_size if vocab_size is not None else meta["vocab_size"],
        eot_id=meta.get("eot_id"),
        meta=meta,
        tokenizer_path=_tokenizer_of(directory, meta),
    )


def corpus_tokenizer(directory: str | os.PathLike) -> Path | None:
    """The tokenizer.json that a prepared corpus's meta.json names (a plain file name in that
    directory, checked as :func:`open_corpus` checks it), or None when it has none."""
    directory = Path(directory)
    return _tokenizer_of(directory, _read_meta(directory))


def _tokenizer_of(directory: Path, meta: dict[str, Any]) -> Path | None:
    path = directory / meta.get("tokenizer", "tokenizer.json")  # a plain name: see _read_meta
    return path if path.is_file() else None


def _read_llmc_header(path: Path) -> np.ndarray | None:
    """The 256-int32 header, or None when the file is shorter than a header."""
    with open(path, "rb") as handle:
        raw = handle.read(LLMC_HEADER_BYTES)
    if len(raw) < LLMC_HEADER_BYTES:
        return None
    return np.frombuffer(raw, dtype="<i4")


def _open_llmc_shard(path: Path) -> np.ndarray:
    header = _read_llmc_header(path)
    size = path.stat().st_size
    if header is None:
        raise ValueError(
            f"llm.c shard {path} is truncated: {size} bytes, shorter than the "
            f"{LLMC_HEADER_BYTES}-byte header; download or write it again"
        )
    if int(header[0]) != LLMC_MAGIC:
        raise ValueError(
            f"{path} is not an llm.c token shard: magic {int(header[0])}, expected {LLMC_MAGIC}; "
            "pass only .bin shards in the llm.c format, or a directory made by `hyperp prepare`"
        )
    if int(header[1]) != LLMC_VERSION:
        raise ValueError(
            f"llm.c shard {path} has version {int(header[1])}; only version {LLMC_VERSION} "
            "(uint16 tokens) is supported"
        )
    tokens = int(header[2])
    expected = LLMC_HEADER_BYTES + 2 * tokens
    if tokens < 0 or size != expected:
        kind = "truncated" if size < expected else "larger than its header says"
        raise ValueError(
            f"llm.c shard {path} is {kind}: {size} bytes, its header says {tokens} tokens = "
            f"{expected} bytes; download or write it again"
        )
    return _memmap(path, np.dtype("<u2"), LLMC_HEADER_BYTES, tokens)


def _llmc_largest_id(files: list[Path], arrays: list[np.ndarray], verify: Verify) -> int | None:
    """The largest id over all shards: read once per shard, then remembered (``stamps.py``)."""
    if verify == "never":
        return None
    records: dict[Path, VerificationRecords] = {}
    largest = -1
    for shard_path, array in zip(files, arrays):
        directory_records = None
        if verify == "once":
            directory_records = records.setdefault(
                shard_path.parent, VerificationRecords(shard_path.parent)
            )
        info = shard_path.stat()
        record = directory_records.lookup(shard_path, info) if directory_records else None
        if record and _is_count(record.get("largest_id")):
            shard_largest = record["largest_id"]
        else:
            shard_largest = largest_id(array)
            if directory_records is not None:
                directory_records.remember(shard_path, info, largest_id=shard_largest)
        largest = max(largest, shard_largest)
    for directory_records in records.values():
        directory_records.save()
    return largest


def _open_llmc(files: list[Path], path: Path, vocab_size: int | None, verify: Verify) -> Corpus:
    arrays = [_open_llmc_shard(shard_path) for shard_path in files]
    largest = _llmc_largest_id(files, arrays, verify)
    if vocab_size is None:
        if largest is not None and largest >= GPT2_VOCAB_SIZE:
            raise ValueError(
                f"llm.c shards at {path} hold ids up to {largest}, beyond GPT-2's vocabulary of "
                f"{GPT2_VOCAB_SIZE}; set --model.vocab_size {largest + 1} (or more)"
            )
        vocab_size = GPT2_VOCAB_SIZE
    elif largest is not None and vocab_size <= largest:
        raise ValueError(
            f"--model.vocab_size {vocab_size} is smaller than the data needs: the llm.c shards "
            f"at {path} hold ids up to {largest}; use --model.vocab_size {largest + 1} or more"
        )
    gpt2_data = vocab_size >= GPT2_VOCAB_SIZE and (largest is None or largest < GPT2_VOCAB_SIZE)
    train_arrays, train_names, val_arrays, val_names = [], [], [], []
    for shard_path, array in zip(files, arrays):
        if "val" in shard_path.name:
            val_arrays.append(array)
            val_names.append(str(shard_path))
        else:
            train_arrays.append(array)
            train_names.append(str(shard_path))
    meta = {
        "format": "llm.c",
        "vocab_size": vocab_size,
        "dtype": "uint16",
        "largest_id": largest,
        "splits": {
            "train": {"tokens": sum(map(len, train_arrays)), "files": train_names},
            "val": {"tokens": sum(map(len, val_arrays)), "files": val_names},
        },
    }
    return Corpus(
        path=path,
        format="llm.c",
        train=TokenSource(train_arrays, train_names),
        val=TokenSource(val_arrays, val_names),
        vocab_size=vocab_size,
        eot_id=GPT2_EOT_ID if gpt2_data else None,
        meta=meta,
        tokenizer_path=None,
    )


def open_corpus(
    path: str | os.PathLike,
    *,
    vocab_size: int | None = None,
    verify: Verify = "once",
) -> Corpus:
    """Validate and memory-map a corpus.

    ``path`` is a directory written by :func:`hyperp.data.prepare` (it has ``meta.json``), a
    directory of llm.c ``.bin`` shards, a glob of them (``"fineweb10B/fineweb_*.bin"``) or one such
    file. See the module docstring for both formats.

    ``vocab_size`` is the model's vocabulary (``--model.vocab_size``), when the user set one. It
    becomes the corpus's ``vocab_size`` if it is at least what the data needs: the largest id + 1
    of llm.c shards, the tokenizer's size for a prepared directory (a larger one pads the
    embedding). A smaller one is refused. Without it, llm.c shards get GPT-2's 50257 (refused if
    their ids go beyond) and prepared directories their meta.json's.

    ``verify``: ``"once"`` (default) reads each shard in full the first time it is opened (sha256
    of prepared shards, largest id of both formats) and afterwards only while its size, mtime,
    inode or fingerprint differ from the record (``stamps.py``); ``"always"`` reads every shard
    on every open; ``"never"`` checks sizes only (and cannot check ids against the vocabulary).

    Raises ``FileNotFoundError`` for a missing path, missing shards or an empty directory, and
    ``ValueError`` for truncated, corrupt or changed shards, bad magic numbers, malformed
    meta.json and ids beyond the vocabulary; each message names the file and the fix.
    """
    if verify not in ("once", "always", "never"):
        raise ValueError(f"verify must be 'once', 'always' or 'never', not {verify!r}")
    _check_vocab_size(vocab_size)
    text = os.fspath(path)
    candidate = Path(text)
    if any(char in text for char in "*?[") and not candidate.exists():
        files = sorted(Path(match) for match in glob.glob(text) if Path(match).is_file())
        if not files:
            raise FileNotFoundError(
                f"no files match {text!r}; point to llm.c .bin shards or a prepared directory"
            )
        return _open_llmc(files, candidate, vocab_size, verify)
    if not candidate.exists():
        raise FileNotFoundError(
            f"data directory {text} does not exist; create it with "
            f"`hyperp prepare TEXT_FILES_OR_DIRS --out {text}`, or point to a directory of "
            "llm.c .bin shards"
        )
    if candidate.is_file():
        return _open_llmc([candidate], candidate, vocab_size, verify)
    if (candidate / "meta.json").is_file():
        return _open_prepared(candidate, verify, vocab_size)
    shard_files = sorted(p for p in candidate.glob("*.bin") if p.is_file())
    if not shard_files:
        raise FileNotFoundError(
            f"{candidate} holds no token shards (no meta.json and no .bin files); create it with "
            f"`hyperp prepare TEXT_FILES_OR_DIRS --out {candidate}`"
        )
    header = _read_llmc_header(shard_files[0])
    if header is None or int(header[0]) != LLMC_MAGIC:
        raise ValueError(
            f"{candidate} has .bin files but no meta.json, and {shard_files[0].name} is not an "
            "llm.c shard: this looks like an interrupted `hyperp prepare`; run it again"
        )
    return _open_llmc(shard_files, candidate, vocab_size, verify)


def write_llmc_shard(path: str | os.PathLike, tokens: np.ndarray) -> Path:
    """Write ``tokens`` (ids < 65536) as an llm.c version-1 shard, atomically; returns the path."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise ValueError("tokens must be a 1-D array")
    if tokens.size and (tokens.min() < 0 or tokens.max() > np.iinfo(np.uint16).max):
        raise ValueError("llm.c version-1 shards hold uint16 ids; some ids are out of range")
    header = np.zeros(LLMC_HEADER_INTS, dtype="<i4")
    header[0], header[1], header[2] = LLMC_MAGIC, LLMC_VERSION, tokens.size
    target = Path(path)
    return atomic_write_bytes(target, header.tobytes() + tokens.astype("<u2").tobytes())
