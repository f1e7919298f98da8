"""Helpers shared by tests (imported as ``from support import ...``)."""

import os
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for child processes that must import this checkout's hyperp."""
    path = os.pathsep.join(p for p in (SRC, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", **extra}
