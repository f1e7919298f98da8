"""Atomic file writes: a reader (or a crash) never sees a half-written file.

The data goes to a temporary file in the same directory, is flushed to disk, and is renamed over
the target with ``os.replace`` (atomic on POSIX and Windows). No torch import here: the analysis
layer uses it too.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = [
    "UMASK",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "give_usual_modes",
]


def _read_umask() -> int:
    """This process's umask, read once at import: from /proc where the kernel reports it, else
    by setting and restoring it here, before any thread of ours exists. Never changed later,
    since a process-wide change races with other threads' files and children."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


UMASK = _read_umask()


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(file)`` on a temporary file, fsync it, then rename it to ``path``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=".tmp", dir=target.parent
    )
    try:
        with os.fdopen(descriptor, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o666 & ~UMASK)  # mkstemp makes 0600; give the usual mode
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    return target


def give_usual_modes(directory: str | os.PathLike) -> None:
    """The modes a plain ``mkdir`` / ``open`` under the user's umask would give, for a tree
    assembled in a private temporary directory (``mkdtemp`` makes 0700, ``mkstemp`` 0600)."""
    os.chmod(directory, 0o777 & ~UMASK)
    for root, directories, files in os.walk(directory):
        for names, mode in ((directories, 0o777), (files, 0o666)):
            for name in names:
                path = os.path.join(root, name)
                if not os.path.islink(path):  # a link's mode is no one's concern
                    os.chmod(path, mode & ~UMASK)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, value: Any) -> Path:
    return atomic_write_text(
        path, json.dumps(value, indent=2, sort_keys=False, default=_jsonable) + "\n"
    )


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
