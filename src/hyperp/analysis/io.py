"""Readers for results: run directories (``summary.json`` + ``config.json``), CSV and JSONL.

Every source becomes a flat record (a dict). Run directories contribute their ``summary.json``
keys plus the nested config, reachable with dotted names (``optim.lr``, ``model.depth``). CSV
and JSONL files (for example W&B exports) contribute their columns; numeric-looking strings
become numbers.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "FailedRun",
    "Records",
    "columns",
    "json_safe",
    "load_records",
    "read_metrics",
    "record_value",
]


@dataclass(frozen=True)
class FailedRun:
    """A run directory without ``summary.json`` (failed, running or interrupted); ``error`` is the
    last line of ``error.txt`` when there is one; ``config`` the run's ``config.json`` when the
    trainer got as far as writing it (so a failed run still says what it was)."""

    path: str
    error: str
    config: dict[str, Any] | None = None

    @property
    def diverged(self) -> bool:
        """The trainer stopped because the loss became NaN or infinite."""
        return "TrainingDiverged" in self.error or "loss became" in self.error


@dataclass
class Records:
    records: list[dict[str, Any]] = field(default_factory=list)
    failed: list[FailedRun] = field(default_factory=list)


def _number_or_text(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text == "" or text.lower() in {"none", "null"}:
        return None
    if text.lower() in {"true", "false"}:
        return text.lower() == "true"
    try:
        number = float(text)
    except ValueError:
        return text
    if (
        math.isfinite(number)
        and number.is_integer()
        and "." not in text
        and "e" not in text.lower()
    ):
        return int(number)
    return number


def record_value(record: dict[str, Any], key: str) -> Any:
    """``record[key]``, or the nested value for a dotted key (``model.depth``) found in the
    record itself or in its ``config``; None when absent."""
    if key in record:
        return record[key]
    parts = key.split(".")
    for root in (record, record.get("config")):
        node: Any = root
        for part in parts:
            if not isinstance(node, dict) or part not in node:
                node = None
                break
            node = node[part]
        if node is not None:
            return node
    return None


def _read_json(path: Path) -> Any:
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a text file; fix or remove it") from None
    return _parse_json(path, text)


def _parse_json(path: Path, text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); fix or remove the file") from error


def _read_run_dir(path: Path) -> dict[str, Any] | FailedRun:
    summary_path = path / "summary.json"
    if not summary_path.exists():
        error_path = path / "error.txt"
        if error_path.exists():
            lines = error_path.read_text(errors="replace").strip().splitlines()
            error = lines[-1] if lines else "failed (empty error.txt)"
        elif (path / ".running").exists():  # the marker hyperp sweep keeps while a run lives
            error = "no summary.json yet (running, or interrupted)"
        else:
            error = "no summary.json (unfinished or failed)"
        config = _read_json(path / "config.json") if (path / "config.json").is_file() else None
        return FailedRun(str(path), error, config if isinstance(config, dict) else None)
    record = _read_json(summary_path)
    if not isinstance(record, dict):
        raise ValueError(f"{summary_path} must hold a JSON object")
    if "config" not in record and (path / "config.json").exists():
        record["config"] = _read_json(path / "config.json")
    record.setdefault("name", path.name)
    record["_source"] = str(path)
    return record


def _is_run_dir(path: Path) -> bool:
    return any((path / name).exists() for name in ("summary.json", "config.json", "error.txt"))


def _read_table(path: Path) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    rows: list[dict[str, Any]] = []
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise ValueError(
            f"{path} is not a text file; give a results table or a run directory"
        ) from None
    if suffix in {".csv", ".tsv"}:
        reader = csv.DictReader(io.StringIO(text), delimiter="\t" if suffix == ".tsv" else ",")
        for row in reader:
            if None in row:  # more fields than the header names
                raise ValueError(
                    f"{path}:{reader.line_num} has more fields than the header; "
                    "fix the row or quote values that hold the delimiter"
                )
            rows.append({key.strip(): _number_or_text(value) for key, value in row.items()})
    elif suffix in {".jsonl", ".ndjson"}:
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number} is not valid JSON ({error})") from error
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{number} must be a JSON object")
            rows.append({key: _number_or_text(value) for key, value in row.items()})
    elif suffix == ".json":
        data = _parse_json(path, text)
        items = data if isinstance(data, list) else [data]
        for item in items:
            if not isinstance(item, dict):
                raise ValueError(f"{path} must hold a JSON object or a list of objects")
            rows.append({key: _number_or_text(value) for key, value in item.items()})
    else:
        raise ValueError(
            f"{path}: unknown file type {suffix!r}; give a run directory, a sweep directory, "
            "or a .csv/.tsv/.jsonl/.json file of results"
        )
    for row in rows:
        row["_source"] = str(path)
    return rows


def load_records(paths: Iterable[str | os.PathLike[str]] | str) -> Records:
    """Read results from run directories, sweep directories (searched recursively for run
    directories), and CSV/TSV/JSONL/JSON files. Failed runs are listed in ``failed``."""
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    result = Records()
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist; give run directories or result files")
        if path.is_file():
            result.records.extend(_read_table(path))
            continue
        run_dirs = (
            [path]
            if _is_run_dir(path)
            else sorted(
                parent for parent in {p.parent for p in path.rglob("*.json")} if _is_run_dir(parent)
            )
        )
        # Failed runs may have only error.txt.
        run_dirs = sorted(set(run_dirs) | {p.parent for p in path.rglob("error.txt")})
        if not run_dirs:
            raise FileNotFoundError(
                f"{path} holds no run directories (no summary.json, config.json or error.txt "
                "found below it)"
            )
        for run_dir in run_dirs:
            item = _read_run_dir(run_dir)
            if isinstance(item, FailedRun):
                result.failed.append(item)
            else:
                result.records.append(item)
    return result


def columns(records: Sequence[dict[str, Any]]) -> list[str]:
    """The flat keys present in any record, in first-seen order."""
    seen: dict[str, None] = {}
    for record in records:
        for key in record:
            if not key.startswith("_") and key != "config":
                seen.setdefault(key, None)
    return list(seen)


def json_safe(value: Any) -> Any:
    """NaN/inf become None and numpy values plain numbers and lists, so the output is strict
    JSON (the one sanitizer for everything written as results)."""
    if isinstance(value, dict):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    if hasattr(value, "tolist") and not isinstance(value, str):  # numpy arrays and scalars
        return json_safe(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_metrics(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """A run directory's ``metrics.jsonl``: one dict per logged step (empty when absent). A
    line cut short by a crash mid-write is skipped."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows
