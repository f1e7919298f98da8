"""Helpers shared by tests (imported as ``from support import ...``)."""

import os
import sysconfig
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for child processes that must import this checkout's hyperp."""
    path = os.pathsep.join(p for p in (SRC, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", **extra}


def prepare_small_corpus(directory: Path) -> Path:
    """A small real corpus: four standard-library modules, BPE vocabulary 512, 30% validation."""
    from hyperp.data import prepare

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = [stdlib / name for name in ("argparse.py", "textwrap.py", "difflib.py", "shlex.py")]
    return prepare(files, directory, vocab_size=512, val_fraction=0.3)
