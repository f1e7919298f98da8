"""Markdown tables: the one renderer behind every report (``hyperp fit``, ``hyperp reproduce``).

A cell may be text, a number (3 significant digits, thousands grouped), a boolean, None (``-``)
or a ``[low, high]`` interval (``unbounded`` when its low end says so).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["cell", "interval", "table"]


def cell(value: Any, digits: int = 3) -> str:
    """One table cell as text."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10000 else str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return "n/a"
        if value.is_integer() and 1 <= abs(value) < 1e9:
            return cell(int(value))
        return f"{value:.{digits}g}"
    if isinstance(value, list) and len(value) == 2:
        return interval(value)
    return str(value)


def interval(pair: Sequence[Any] | None) -> str:
    """``[low, high]``, or ``unbounded``, or ``-`` without one."""
    if not pair:
        return "-"
    low, high = pair
    if low == "unbounded":
        return "unbounded"
    if low is None or high is None:
        return "-"
    return f"[{cell(low)}, {cell(high)}]"


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """The lines of a markdown table (a ``|`` inside a cell becomes ``/``)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [cell(value).replace("|", "/").replace("\n", " ") for value in row]
        lines.append("| " + " | ".join(cells) + " |")
    return lines
