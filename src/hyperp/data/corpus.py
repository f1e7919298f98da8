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
``meta["splits"][split]["shards"]`` order, each entry ``{"file", "tokens", "sha256"}``. Every
document is preceded by the end-of-text id ``meta["eot_id"]``, so a split reads
``EOT doc0 EOT doc1 ...``.

llm.c / modded-nanogpt shards
-----------------------------
The format of the widely shared pre-tokenized FineWeb shards: a header of 256 little-endian int32
(``header[0]`` = magic 20240520, ``header[1]`` = version 1, ``header[2]`` = number of tokens), then
that many uint16 GPT-2 token ids. ``open_corpus`` accepts a directory of such files or a glob;
files whose name contains ``"val"`` form the validation split, all others the training split
(as in ``fineweb_val_000000.bin`` / ``fineweb_train_000001.bin``). Their vocabulary is GPT-2's
(50257, end-of-text id 50256) unless ``vocab_size`` is given.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from hyperp.fileio import atomic_write_bytes

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "LLMC_HEADER_INTS",
    "LLMC_MAGIC",
    "LLMC_VERSION",
    "Corpus",
    "TokenSource",
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
# Per-directory record of shards already checksummed: {file: [size, mtime_ns, sha256]}.
VERIFIED_STAMP = ".verified.json"
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
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(self.tokenizer_path))


def _memmap(path: Path, dtype: np.dtype, offset: int, count: int) -> np.ndarray:
    if count == 0:
        return np.empty(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=(count,))


def _load_stamp(directory: Path) -> dict[str, list]:
    try:
        stamp = json.loads((directory / VERIFIED_STAMP).read_text())
        return stamp if isinstance(stamp, dict) else {}
    except (OSError, ValueError):
        return {}


def _save_stamp(directory: Path, stamp: dict[str, list]) -> None:
    temporary = directory / f"{VERIFIED_STAMP}.{os.getpid()}.tmp"
    try:
        temporary.write_text(json.dumps(stamp, indent=0))
        os.replace(temporary, directory / VERIFIED_STAMP)
    except OSError:
        # A read-only data directory is fine: shards are then re-verified on every open.
        temporary.unlink(missing_ok=True)


def _open_prepared(directory: Path, verify: Verify) -> Corpus:
    meta_path = directory / "meta.json"
    rerun = f"re-create it with `hyperp prepare ... --out {directory}`"
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{meta_path} is not valid JSON ({error.msg}); {rerun}") from None
    if meta.get("format") != FORMAT_NAME:
        raise ValueError(f"{meta_path} is not a hyperp shard directory (no format {FORMAT_NAME!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{meta_path} has format_version {meta.get('format_version')}, this hyperp reads "
            f"{FORMAT_VERSION}; {rerun}"
        )
    dtype_name = meta.get("dtype")
    if dtype_name not in _DTYPES:
        raise ValueError(f"{meta_path}: unknown dtype {dtype_name!r}; {rerun}")
    dtype = _DTYPES[dtype_name]
    stamp = _load_stamp(directory) if verify == "once" else {}
    stamp_changed = False
    splits: dict[str, TokenSource] = {}
    for split in ("train", "val"):
        entries = meta.get("splits", {}).get(split, {}).get("shards", [])
        arrays, names = [], []
        for entry in entries:
            shard_path = directory / entry["file"]
            tokens = int(entry["tokens"])
            if not shard_path.is_file():
                raise FileNotFoundError(
                    f"shard {shard_path} listed in meta.json is missing; {rerun}"
                )
            size = shard_path.stat().st_size
            expected = tokens * dtype.itemsize
            if size != expected:
                raise ValueError(
                    f"shard {shard_path} is truncated or corrupt: {size} bytes, meta.json says "
                    f"{tokens} {dtype_name} tokens = {expected} bytes; {rerun}"
                )
            if verify != "never":
                mtime = shard_path.stat().st_mtime_ns
                known = stamp.get(entry["file"])
                if not (known and known == [size, mtime, entry["sha256"]]):
                    actual = sha256_file(shard_path)
                    if actual != entry["sha256"]:
                        raise ValueError(
                            f"shard {shard_path} is corrupt: sha256 {actual[:16]}... does not "
                            f"match meta.json ({entry['sha256'][:16]}...); {rerun}"
                        )
                    stamp[entry["file"]] = [size, mtime, actual]
                    stamp_changed = True
            arrays.append(_memmap(shard_path, dtype, 0, tokens))
            names.append(entry["file"])
        splits[split] = TokenSource(arrays, names)
    if not splits["train"].shards:
        raise ValueError(f"{meta_path} lists no training shards; {rerun}")
    if verify == "once" and stamp_changed:
        _save_stamp(directory, stamp)
    tokenizer_path = directory / meta.get("tokenizer", "tokenizer.json")
    return Corpus(
        path=directory,
        format=FORMAT_NAME,
        train=splits["train"],
        val=splits["val"],
        vocab_size=int(meta["vocab_size"]),
        eot_id=meta.get("eot_id"),
        meta=meta,
        tokenizer_path=tokenizer_path if tokenizer_path.is_file() else None,
    )


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


def _open_llmc(files: list[Path], path: Path, vocab_size: int | None) -> Corpus:
    train_arrays, train_names, val_arrays, val_names = [], [], [], []
    for shard_path in files:
        array = _open_llmc_shard(shard_path)
        if "val" in shard_path.name:
            val_arrays.append(array)
            val_names.append(str(shard_path))
        else:
            train_arrays.append(array)
            train_names.append(str(shard_path))
    if vocab_size is None:
        vocab_size = GPT2_VOCAB_SIZE
    meta = {
        "format": "llm.c",
        "vocab_size": vocab_size,
        "dtype": "uint16",
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
        eot_id=GPT2_EOT_ID if vocab_size == GPT2_VOCAB_SIZE else None,
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

    ``vocab_size`` overrides the vocabulary of llm.c shards (default GPT-2's 50257); prepared
    directories take theirs from meta.json. ``verify`` controls sha256 checks of prepared shards:
    ``"once"`` (default) hashes a shard the first time it is opened and re-hashes only when its
    size or mtime changes (recorded in ``.verified.json`` in the directory); ``"always"`` hashes
    on every open; ``"never"`` checks sizes only. Sizes are always checked.

    Raises ``FileNotFoundError`` for a missing path, missing shards or an empty directory, and
    ``ValueError`` for truncated or corrupt shards, bad magic numbers, checksum mismatches and
    unreadable meta.json; each message names the file and how to fix it.
    """
    if verify not in ("once", "always", "never"):
        raise ValueError(f"verify must be 'once', 'always' or 'never', not {verify!r}")
    text = os.fspath(path)
    candidate = Path(text)
    if any(char in text for char in "*?[") and not candidate.exists():
        files = sorted(Path(match) for match in glob.glob(text) if Path(match).is_file())
        if not files:
            raise FileNotFoundError(
                f"no files match {text!r}; point to llm.c .bin shards or a prepared directory"
            )
        return _open_llmc(files, candidate, vocab_size)
    if not candidate.exists():
        raise FileNotFoundError(
            f"data directory {text} does not exist; create it with "
            f"`hyperp prepare TEXT_FILES_OR_DIRS --out {text}`, or point to a directory of "
            "llm.c .bin shards"
        )
    if candidate.is_file():
        return _open_llmc([candidate], candidate, vocab_size)
    if (candidate / "meta.json").is_file():
        return _open_prepared(candidate, verify)
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
    return _open_llmc(shard_files, candidate, vocab_size)


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
