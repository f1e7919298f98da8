"""``results.json``: every claim, number, interval, table and verdict as structured data.

The report is rendered from this file alone. It also records the size and the run directory it
was made from, so a report is never assembled from results of different sizes.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hyperp.analysis.io import json_safe, record_value
from hyperp.reproduce.catalogue import PAPER_REGIME, THRESHOLDS
from hyperp.reproduce.studies import STUDIES, study
from hyperp.reproduce.studies.common import StudyResult, regime

__all__ = ["FORMAT", "describe_data", "load_results", "merge_results", "study_entry"]

FORMAT = "hyperp-reproduce-results/2"


def _relative(path: str | Path, root: Path) -> str:
    try:
        return os.path.relpath(Path(path).resolve(), root.resolve())
    except ValueError:
        return str(path)


def study_entry(
    result: StudyResult, command: str, report_dir: Path, bootstrap: dict[str, Any]
) -> dict[str, Any]:
    item = study(result.name)
    finished = len(result.records)
    hours = sum(float(r.get("wall_time_s") or 0.0) for r in result.records) / 3600
    inputs: dict[tuple[str, str], dict[str, Any]] = {}
    for owner, what, table in result.inputs:
        entry = inputs.setdefault(
            (owner, what),
            {"study": owner, "what": what, "finished": 0, "diverged": 0, "training_hours": 0.0},
        )
        entry["finished"] += len(table.records)
        entry["diverged"] += table.diverged
        entry["training_hours"] += (
            sum(float(r.get("wall_time_s") or 0) for r in table.records) / 3600
        )
    return {
        "title": item.title,
        "question": item.question,
        "design": item.design,
        "command": command,
        "regime": {**regime(result.records), "paper": PAPER_REGIME},
        "runs": {
            "finished": finished,
            "diverged": result.diverged,
            "failed": result.failed,
            "training_hours": hours,
            "max_tokens": max((int(r.get("tokens") or 0) for r in result.records), default=0),
            "inputs": list(inputs.values()),
        },
        "claims": result.claims,
        "numbers": result.numbers,
        "tables": result.tables,
        "figures": [
            {"path": _relative(f["path"], report_dir), "caption": f["caption"]}
            for f in result.figures
        ],
        "notes": result.notes,
        "findings": result.findings,
        "bootstrap": bootstrap,
    }


_CORPUS_KEYS = (
    "path",
    "format",
    "description",
    "train_tokens",
    "val_tokens",
    "train_documents",
    "val_documents",
)


def describe_data(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The corpus the runs trained on, read from the runs: their ``summary.json`` ``corpus``
    entry when the trainer wrote one, else the ``meta.json`` of the data their config names (the
    built-in corpus's in the cache); and the validation tokens (and documents) every run was
    evaluated on."""
    corpora: dict[str, dict[str, Any]] = {}
    directories: dict[str, Path | None] = {}
    evaluated: set[int] = set()
    for record in records:
        entry, directory = _corpus_of(record)
        key = str(entry.get("path"))
        corpora.setdefault(key, entry)
        directories.setdefault(key, directory)
        batches = record_value(record, "train.eval_batches")
        rows = record_value(record, "train.batch_size")
        seq_len = record_value(record, "train.seq_len")
        val_tokens = entry.get("val_tokens")
        if all(isinstance(v, int) for v in (batches, rows, seq_len)):
            tokens = batches * rows * seq_len
            if isinstance(val_tokens, int):  # whole windows of the split, at most
                tokens = min(tokens, (val_tokens - 1) // seq_len * seq_len)
            evaluated.add(tokens)
    out: dict[str, Any] = {"corpora": list(corpora.values()), "evaluated_tokens": sorted(evaluated)}
    if len(corpora) == 1 and len(evaluated) == 1:
        key, entry = next(iter(corpora.items()))
        directory = directories[key]
        if directory is not None and entry.get("eot_id") is not None:
            out["evaluated_documents"] = _documents(
                directory, next(iter(evaluated)), entry["eot_id"]
            )
    return out


def _corpus_of(record: dict[str, Any]) -> tuple[dict[str, Any], Path | None]:
    vocab = record_value(record, "model.vocab_size")
    corpus = record.get("corpus")
    if isinstance(corpus, dict):  # written by the trainer
        entry = {key: corpus.get(key) for key in _CORPUS_KEYS} | {"vocab_size": vocab}
        path = Path(str(corpus.get("path") or ""))
        directory = path if path.is_dir() and (path / "meta.json").is_file() else None
        if directory is not None:  # the prepared corpus's own meta says what it is
            meta = _prepared_meta(directory)
            entry["eot_id"] = meta.get("eot_id")
            entry["description"] = _meta_description(meta)
        return entry, directory
    data = record_value(record, "data") or {}
    directory = _data_directory(data)
    entry = {"path": data.get("path") or "", "vocab_size": vocab}
    if directory is None:
        entry.update({"description": data.get("path") or "the built-in corpus (not found)"})
        return entry, None
    meta = _prepared_meta(directory)
    splits = meta.get("splits", {})
    entry.update(
        {
            "path": data.get("path") or str(directory),
            "format": meta.get("format"),
            "description": _meta_description(meta),
            "train_tokens": splits.get("train", {}).get("tokens"),
            "val_tokens": splits.get("val", {}).get("tokens"),
            "train_documents": splits.get("train", {}).get("documents"),
            "val_documents": splits.get("val", {}).get("documents"),
            "eot_id": meta.get("eot_id"),
        }
    )
    return entry, directory


def _prepared_meta(directory: Path) -> dict[str, Any]:
    """A prepared corpus's meta.json, through the data layer's one (validating) reader."""
    from hyperp.data import open_corpus

    return open_corpus(directory, verify="never").meta


def _meta_description(meta: dict[str, Any]) -> str:
    """What a prepared corpus is, from its meta.json: the built-in corpus's own description,
    else the dataset or files it was made from."""
    command = str(meta.get("command") or "")
    if command.startswith("hyperp default corpus"):
        return command
    if meta.get("hf_dataset"):
        return f"Hugging Face dataset {meta['hf_dataset']} ({meta.get('hf_split') or 'train'})"
    inputs = [Path(str(p)).name for p in meta.get("inputs") or []]
    if inputs:
        shown = ", ".join(inputs[:3]) + (", ..." if len(inputs) > 3 else "")
        return f"text prepared by hyperp prepare from {len(inputs)} input(s) ({shown})"
    return command or "a prepared corpus"


def _data_directory(data: dict[str, Any]) -> Path | None:
    """The prepared directory a run's data settings name (None: llm.c shards or missing)."""
    if data.get("path"):
        candidate = Path(data["path"])
        return candidate if (candidate / "meta.json").is_file() else None
    from hyperp.data import default_corpus

    # The runs prepared it already, so this only returns its cached location.
    vocab = int(data.get("vocab_size") or 8192)
    return default_corpus(vocab_size=vocab, max_bytes=data.get("max_bytes") or None)


def _documents(directory: Path, tokens: int, eot_id: int) -> int:
    """Documents in the first ``tokens`` validation tokens: one per end-of-text id (each
    document is preceded by one) plus one if the window starts inside a document."""
    from hyperp.data import open_corpus

    corpus = open_corpus(directory, verify="never")
    window = np.asarray(corpus.val[0 : min(tokens + 1, len(corpus.val))])
    count = int(np.sum(window == eot_id))
    return count + (0 if window.size and window[0] == eot_id else 1)


def load_results(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return data if isinstance(data, dict) and data.get("format") == FORMAT else None


def merge_results(
    existing: dict[str, Any] | None,
    fresh: dict[str, dict[str, Any]],
    *,
    size: str,
    out: str,
    replace_all: bool,
) -> dict[str, dict[str, Any]]:
    """The studies a report holds: the fresh ones, plus (with ``--only``) the existing report's
    others, which must come from the same size and run directory."""
    if replace_all or existing is None:
        kept: dict[str, dict[str, Any]] = {}
    else:
        if existing.get("size") != size or existing.get("runs_dir") != out:
            raise ValueError(
                f"the report there holds {existing.get('size')} results from "
                f"{existing.get('runs_dir')}; adding {size} results from {out} would mix them. "
                "Write this report elsewhere with --report-to, or run every study (no --only)"
            )
        kept = dict(existing.get("studies", {}))
    kept.update(fresh)
    return {item.name: kept[item.name] for item in STUDIES if item.name in kept}


def headline(studies: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """Claim labels by standing: resolved here, outside the regime, not resolved."""
    groups: dict[str, list[str]] = {"resolved": [], "outside_regime": [], "not_resolved": []}
    for entry in studies.values():
        for claim in entry["claims"]:
            verdict = claim["verdict"]
            if verdict["outcome"] == "not resolved":
                groups["not_resolved"].append(claim["label"])
            elif verdict["inside_regime"]:
                groups["resolved"].append(claim["label"])
            else:
                groups["outside_regime"].append(claim["label"])
    return groups


def thresholds() -> list[dict[str, Any]]:
    return [
        {"name": name, "value": value, "meaning": meaning}
        for name, (value, meaning) in THRESHOLDS.items()
    ]


def finite_or_none(value: float) -> float | None:
    return value if isinstance(value, float) and math.isfinite(value) else None


def dumps(results: dict[str, Any]) -> str:
    return json.dumps(json_safe(results), indent=2) + "\n"
