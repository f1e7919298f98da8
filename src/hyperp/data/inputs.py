"""Reading raw text for ``hyperp prepare``: files, directories, globs, JSONL, Parquet, HF datasets.

Every input is turned into a stream of :class:`Document` objects in a deterministic order, so that
every pass over the same inputs (to pick the split, to train the tokenizer, to encode) sees the same
documents. Text and JSONL files may be gzip-compressed (``notes.txt.gz``, ``dump.jsonl.gz``).

Binary files (a NUL byte in the first 8 KiB, after decompression for ``.gz``) are skipped, whether
named explicitly or found in a directory, and counted: ``prepare`` warns about them and refuses
inputs that hold nothing else. Parquet files are binary by nature and never sniffed.

What counts as one document:

- a plain-text file is one document, unless it contains the literal marker ``<|endoftext|>``
  (as e.g. TinyStories ships), in which case the marker separates documents;
- a JSONL line is one document (its ``jsonl_field``); blank lines and ``null`` values are skipped;
- a Parquet row is one document (its ``parquet_column``);
- a Hugging Face dataset row is one document (its ``hf_field``).

Undecodable bytes never stop preparation: each invalid UTF-8 byte becomes U+FFFD and is counted in
``Document.replaced_bytes`` (summed into ``meta.json`` as ``replaced_bytes``).
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import re
import stat
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

__all__ = [
    "DOCUMENT_MARKER",
    "Document",
    "DocumentSource",
    "decode_utf8",
    "expand_inputs",
    "one_line",
]

# Plain-text files that contain this marker are split into documents at it.
DOCUMENT_MARKER = "<|endoftext|>"

JSONL_SUFFIXES = (".jsonl", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)
GZIP_SUFFIX = ".gz"
# What a damaged or mislabelled gzip file raises while being read.
_GZIP_ERRORS = (gzip.BadGzipFile, EOFError, zlib.error)

# surrogateescape maps each undecodable byte 0x80-0xFF to one code point in this range.
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")
# Any lone surrogate (e.g. from a JSON "\ud800" escape) cannot be encoded as UTF-8.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_GLOB_CHARS = ("*", "?", "[")
# Bytes sniffed to tell binary files (skipped when found by a directory walk) from text.
_SNIFF_BYTES = 8192


@dataclass(frozen=True)
class Document:
    """One document of the corpus: valid Unicode text, where it came from, bytes replaced."""

    text: str
    origin: str
    replaced_bytes: int = 0


def decode_utf8(raw: bytes) -> tuple[str, int]:
    """Decode UTF-8, replacing each undecodable byte by U+FFFD; returns (text, bytes replaced)."""
    try:
        return raw.decode("utf-8"), 0
    except UnicodeDecodeError:
        escaped = raw.decode("utf-8", errors="surrogateescape")
        replaced = len(_ESCAPED_BYTE.findall(escaped))
        return _ESCAPED_BYTE.sub("\ufffd", escaped), replaced


def _clean_string(text: str) -> tuple[str, int]:
    """Replace lone surrogates (not encodable as UTF-8) by U+FFFD; returns (text, replaced)."""
    try:
        text.encode("utf-8")
        return text, 0
    except UnicodeEncodeError:
        replaced = len(_LONE_SURROGATE.findall(text))
        return _LONE_SURROGATE.sub("\ufffd", text), replaced


def one_line(text: object) -> str:
    """A library's (possibly multi-line) message folded into one line."""
    return " ".join(str(text).split())


def _has_glob(text: str) -> bool:
    return any(char in text for char in _GLOB_CHARS)


def _open_input(path: Path) -> IO[bytes]:
    """The file's bytes, decompressed when its name ends in .gz."""
    if path.name.lower().endswith(GZIP_SUFFIX):
        return gzip.open(path, "rb")
    return open(path, "rb")


def _read_failure(path: Path, error: BaseException) -> ValueError:
    if isinstance(error, _GZIP_ERRORS) and path.name.lower().endswith(GZIP_SUFFIX):
        return ValueError(
            f"{path} is not a readable gzip file ({one_line(error) or type(error).__name__}); "
            "download it again, or decompress it and pass the text"
        )
    reason = error.strerror if isinstance(error, OSError) and error.strerror else one_line(error)
    return ValueError(f"cannot read {path}: {reason}; check the file and its permissions")


def _looks_binary(path: Path) -> bool:
    if _file_kind(path) == "parquet":
        return False
    try:
        with _open_input(path) as handle:
            return b"\x00" in handle.read(_SNIFF_BYTES)
    except (*_GZIP_ERRORS, OSError) as error:
        raise _read_failure(path, error) from None


def _walk_directory(directory: Path) -> tuple[list[Path], list[Path]]:
    """Regular, non-hidden, non-binary files under ``directory`` in sorted order; and the binary."""
    files: list[Path] = []
    skipped_binary: list[Path] = []
    for root, dirnames, filenames in os.walk(directory):
        # Sorting in place makes os.walk itself deterministic; hidden dirs (.git) are pruned.
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__pycache__")
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = Path(root) / name
            if not path.is_file():
                continue
            if _looks_binary(path):
                skipped_binary.append(path)
                continue
            files.append(path)
    return files, skipped_binary


def _add_file(path: Path, files: list[Path], skipped_binary: list[Path]) -> None:
    if _looks_binary(path):
        skipped_binary.append(path)
    else:
        files.append(path)


def expand_inputs(inputs: Sequence[str | os.PathLike]) -> tuple[list[Path], list[Path]]:
    """Resolve files, directories and globs to a deduplicated, ordered list of files.

    Returns ``(files, skipped_binary)``: the text files to read, and the files skipped because
    they look binary (a NUL byte in the first 8 KiB; a directory of sources often holds images or
    compiled files, and a renamed program is no text either). Raises FileNotFoundError for a
    missing path or a pattern that matches nothing, ValueError for special files (devices, pipes).
    """
    files: list[Path] = []
    skipped_binary: list[Path] = []
    for item in inputs:
        text = os.fspath(item)
        if _has_glob(text) and not Path(text).exists():
            matches = sorted(glob.glob(text, recursive=True))
            if not matches:
                raise FileNotFoundError(
                    f"no files match the pattern {text!r}; check the path, or quote the pattern "
                    "so that the shell does not expand it"
                )
            for match in matches:
                path = Path(match)
                if path.is_dir():
                    found, binary = _walk_directory(path)
                    files.extend(found)
                    skipped_binary.extend(binary)
                elif path.is_file():
                    _add_file(path, files, skipped_binary)
            continue
        path = Path(text)
        if not path.exists():
            raise FileNotFoundError(
                f"input {text!r} does not exist; pass text, JSONL, Parquet or .gz files, "
                "directories or glob patterns"
            )
        if path.is_dir():
            found, binary = _walk_directory(path)
            files.extend(found)
            skipped_binary.extend(binary)
        elif not stat.S_ISREG(path.stat().st_mode):
            # A device or a pipe would be read forever (/dev/zero) or give nothing (/dev/null).
            raise ValueError(
                f"input {text} is not a regular file; pass text, JSONL, Parquet or .gz files"
            )
        else:
            _add_file(path, files, skipped_binary)
    unique: dict[Path, None] = {}
    for path in files:
        unique.setdefault(path.resolve(), None)
    return list(unique), skipped_binary


def _file_kind(path: Path) -> str:
    name = path.name.lower().removesuffix(GZIP_SUFFIX)
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    return "text"


def _read_bytes(path: Path) -> bytes:
    try:
        with _open_input(path) as handle:
            return handle.read()
    except (*_GZIP_ERRORS, OSError) as error:
        raise _read_failure(path, error) from None


def _read_lines(path: Path) -> Iterator[bytes]:
    try:
        with _open_input(path) as handle:
            yield from handle
    except (*_GZIP_ERRORS, OSError) as error:
        raise _read_failure(path, error) from None


def _text_documents(path: Path) -> Iterator[Document]:
    text, replaced = decode_utf8(_read_bytes(path))
    if DOCUMENT_MARKER not in text:
        if text:
            yield Document(text, str(path), replaced)
        return
    # The replaced-byte count is attributed to the file's first document; only the total matters.
    pieces = [piece.strip("\n") for piece in text.split(DOCUMENT_MARKER)]
    first = True
    for index, piece in enumerate(pieces):
        if piece:
            yield Document(piece, f"{path}#{index}", replaced if first else 0)
            first = False


def _jsonl_documents(path: Path, field: str) -> Iterator[Document]:
    for line_number, raw_line in enumerate(_read_lines(path), start=1):
        line, replaced = decode_utf8(raw_line)
        if not line.strip():
            continue
        origin = f"{path}:{line_number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{origin}: not valid JSON ({error.msg}); each line of a JSONL file must be "
                "one JSON object"
            ) from None
        if not isinstance(record, dict):
            raise ValueError(
                f"{origin}: expected a JSON object per line, got {type(record).__name__}"
            )
        if field not in record:
            fields = ", ".join(sorted(record)) or "none"
            raise ValueError(
                f"{origin}: no field {field!r} (fields: {fields}); choose the text field with "
                "--jsonl-field NAME"
            )
        value = record[field]
        if value is None:
            continue
        if not isinstance(value, str):
            raise ValueError(
                f"{origin}: field {field!r} holds {type(value).__name__}, not text; choose the "
                "text field with --jsonl-field NAME"
            )
        value, surrogates = _clean_string(value)
        if value:
            yield Document(value, origin, replaced + surrogates)


def _parquet_documents(path: Path, column: str) -> Iterator[Document]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError(
            f"reading {path} needs pyarrow: pip install pyarrow (or pip install 'hyperp[parquet]')"
        ) from None
    try:
        parquet_file = pq.ParquetFile(path)
    except Exception as error:  # pyarrow raises its own ArrowInvalid for non-Parquet files
        raise ValueError(f"{path}: not a readable Parquet file ({one_line(error)})") from None
    names = parquet_file.schema_arrow.names
    if column not in names:
        raise ValueError(
            f"{path}: no column {column!r} (columns: {', '.join(names)}); choose the text column "
            "with --parquet-column NAME"
        )
    row = 0
    for batch in parquet_file.iter_batches(columns=[column], batch_size=4096):
        for value in batch.column(0).to_pylist():
            row += 1
            if value is None:
                continue
            if isinstance(value, bytes):
                value, replaced = decode_utf8(value)
            elif isinstance(value, str):
                replaced = 0
            else:
                raise ValueError(
                    f"{path}: column {column!r} holds {type(value).__name__}, not text; choose the "
                    "text column with --parquet-column NAME"
                )
            if value:
                yield Document(value, f"{path}[{row - 1}]", replaced)


def _load_hf_dataset(name_or_path: str, split: str):
    try:
        import datasets
    except ImportError:
        raise ValueError(
            "--hf-dataset needs the Hugging Face datasets library: pip install 'hyperp[datasets]'"
        ) from None
    local = Path(name_or_path)
    # Dataset.save_to_disk writes state.json (DatasetDict: dataset_dict.json); such a copy loads
    # without any network access. Anything else goes to load_dataset (a hub name, a local
    # script/data directory, or a cached dataset when HF_DATASETS_OFFLINE=1).
    if local.is_dir() and any((local / n).exists() for n in ("state.json", "dataset_dict.json")):
        loaded = datasets.load_from_disk(str(local))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise ValueError(
                    f"dataset at {local} has splits {sorted(loaded)}, not {split!r}; pass "
                    "--hf-split NAME"
                )
            loaded = loaded[split]
        return loaded
    # A dataset's loading script is code from elsewhere: datasets 4 dropped them; older
    # versions are told not to run them.
    no_scripts = {"trust_remote_code": False} if _major(datasets.__version__) < 4 else {}
    try:
        return datasets.load_dataset(name_or_path, split=split, **no_scripts)
    except (OSError, ValueError, ImportError) as error:  # not found, offline, bad split, ...
        raise ValueError(
            f"cannot load dataset {name_or_path!r} split {split!r}: {one_line(error)}; check the "
            "name, --hf-split, and network access (or pass a save_to_disk copy)"
        ) from None


def _major(version: str) -> int:
    head = version.split(".")[0]
    return int(head) if head.isdigit() else 0


def _hf_documents(name_or_path: str, split: str, field: str) -> Iterator[Document]:
    dataset = _load_hf_dataset(name_or_path, split)
    columns = list(getattr(dataset, "column_names", None) or [])
    if columns and field not in columns:
        raise ValueError(
            f"dataset {name_or_path!r} has no column {field!r} (columns: {', '.join(columns)}); "
            "choose the text column with --hf-field NAME"
        )
    for row, record in enumerate(dataset):
        value = record[field]
        if value is None:
            continue
        if not isinstance(value, str):
            raise ValueError(
                f"dataset {name_or_path!r} column {field!r} holds {type(value).__name__}, not text"
            )
        value, replaced = _clean_string(value)
        if value:
            yield Document(value, f"{name_or_path}[{row}]", replaced)


@dataclass
class DocumentSource:
    """A re-iterable, deterministic stream of documents from files and/or one HF dataset."""

    files: list[Path]
    jsonl_field: str = "text"
    parquet_column: str = "text"
    hf_dataset: str | None = None
    hf_split: str = "train"
    hf_field: str = "text"
    max_bytes: int | None = None  # stop once the documents' text reaches this many UTF-8 bytes

    def documents(self) -> Iterator[Document]:
        """Yield every document, in the same order on every call; with ``max_bytes``, the
        documents in that order until their text reaches ``max_bytes`` (the one that crosses
        the cap is the last, so at least one document is read)."""
        if self.max_bytes is None:
            yield from self._all_documents()
            return
        total = 0
        for document in self._all_documents():
            yield document
            total += len(document.text.encode("utf-8", "surrogatepass"))
            if total >= self.max_bytes:
                return

    def _all_documents(self) -> Iterator[Document]:
        for path in self.files:
            kind = _file_kind(path)
            if kind == "jsonl":
                yield from _jsonl_documents(path, self.jsonl_field)
            elif kind == "parquet":
                yield from _parquet_documents(path, self.parquet_column)
            else:
                yield from _text_documents(path)
        if self.hf_dataset is not None:
            yield from _hf_documents(self.hf_dataset, self.hf_split, self.hf_field)
