"""Reading a run directory's ``metrics.jsonl`` (no torch, so plots and analyses stay light)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

__all__ = ["read_metrics"]


def _number(value: Any) -> Any:
    # The trainer writes non-finite floats as the strings "nan", "inf" and "-inf" (JSON has none).
    if isinstance(value, str) and value.lower() in ("nan", "inf", "-inf", "infinity", "-infinity"):
        return float(value)
    return value


def read_metrics(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of ``RUN/metrics.jsonl`` in order (an empty list when there is none yet).

    A torn last line (a run killed while writing it, or one still running) is skipped; a
    malformed line elsewhere is an error naming the file and line.
    """
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            if number == len(lines):
                break
            raise ValueError(f"{path}:{number} is not valid JSON ({error.msg})") from None
        if isinstance(record, dict):
            records.append({key: _number(value) for key, value in record.items()})
    return records


def is_finite_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
