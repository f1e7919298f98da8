"""Where ``prepare`` writes: the new preparation is built beside the old one and swapped in whole.

- :func:`check_output` refuses, before anything is read or written, an ``--out`` that prepare
  cannot or must not replace: a file, a read-only directory, a directory in a read-only parent, a
  directory holding files that prepare did not write.
- :func:`staged_directory` yields an empty hidden directory beside ``out``
  (``.NAME.partial-HOST-PID-XXXXXXXX``). When the ``with`` block succeeds, ``out`` is renamed
  aside (``.NAME.replaced-...``), the staging directory is renamed to ``out`` and the old one is
  deleted. When anything fails, Ctrl-C included, the staging directory is deleted and ``out`` is
  left exactly as it was.

A process killed outright (SIGKILL, power loss) can leave a hidden directory behind. The next
prepare of the same ``out`` deletes a ``partial`` one, and renames a ``replaced`` one back to
``out`` if the kill fell between the two renames (:func:`recover_interrupted_swap`). Only
directories of dead processes on this host are touched.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

from hyperp.fileio import atomic_write_bytes

__all__ = [
    "check_output",
    "exclusive_lock",
    "is_prepared_file",
    "recover_interrupted_swap",
    "staged_directory",
    "writable",
    "write_output",
]

META_NAME = "meta.json"
TOKENIZER_NAME = "tokenizer.json"
STAMP_NAME = ".verified.json"


def is_prepared_file(name: str) -> bool:
    """Whether a file name is one that prepare writes into its output directory."""
    return (
        name in (META_NAME, TOKENIZER_NAME, STAMP_NAME)
        or (name.endswith(".bin") and name.startswith(("train_", "val_")))
        or (name.startswith(".") and name.endswith(".tmp"))
    )


def writable(directory: Path) -> bool:
    """Whether we may write in ``directory``: permitted, and not marked read-only by its mode.

    The mode check matters for root, whom ``os.access`` always permits: a directory a user has
    made read-only (``chmod a-w``) is meant to be left alone.
    """
    try:
        mode = directory.stat().st_mode
    except OSError:
        return False
    return os.access(directory, os.W_OK) and bool(mode & 0o222)


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an inter-process lock on ``path`` (a directory, or a lock file, created if missing)
    where the OS offers ``flock``; elsewhere the renames that follow are atomic on their own."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    flags = os.O_RDONLY if path.is_dir() else os.O_RDWR | os.O_CREAT
    descriptor = os.open(path, flags, 0o666)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # closing releases the lock


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output(out: Path) -> None:
    """Raise ValueError naming the fix if prepare cannot build and swap in ``out``; writes nothing."""
    if not out.name:
        raise ValueError(f"--out {out} is not a directory prepare can replace; choose a new one")
    if out.exists():
        if not out.is_dir():
            raise ValueError(f"output {out} exists and is not a directory; choose another --out")
        foreign = sorted(entry.name for entry in out.iterdir() if not is_prepared_file(entry.name))
        if foreign:
            raise ValueError(
                f"output directory {out} holds files that prepare did not write "
                f"({', '.join(foreign[:5])}); choose an empty or new --out directory"
            )
        if not writable(out):
            raise ValueError(
                f"output directory {out} is read-only; make it writable (chmod u+w) or choose "
                "another --out"
            )
        if not writable(out.parent):
            raise ValueError(
                f"cannot replace {out}: its directory {out.parent} is read-only (prepare builds "
                "the new preparation beside the old one); choose an --out in a writable directory"
            )
        return
    existing = _nearest_existing(out.parent)
    if not existing.is_dir():
        raise ValueError(
            f"cannot create {out}: {existing} is not a directory; choose another --out"
        )
    if not writable(existing):
        raise ValueError(
            f"cannot create {out}: {existing} is read-only; choose an --out in a writable directory"
        )


def write_output(path: Path, data: bytes) -> None:
    """Write one file of a preparation; a write error (disk full, quota) becomes one clear line."""
    try:
        atomic_write_bytes(path, data)
    except OSError as error:
        raise _write_failure(path, error) from None


def _write_failure(path: Path, error: OSError) -> ValueError:
    reason = error.strerror or str(error)
    return ValueError(
        f"cannot write {path}: {reason}; free some space (or raise the limit) or choose another "
        "--out; the previous preparation, if any, is unchanged"
    )


# -- hidden working directories beside the output ---------------------------------------------


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "host"


def _hidden(out: Path, kind: str) -> Path:
    return out.parent / f".{out.name}.{kind}-{_host()}-{os.getpid()}-{secrets.token_hex(4)}"


def _leftovers(out: Path, kind: str) -> list[Path]:
    """Hidden ``kind`` directories of ``out`` left by dead processes of this host."""
    pattern = re.compile(rf"\.{re.escape(out.name)}\.{kind}-(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]+")
    found = []
    with contextlib.suppress(OSError):
        for entry in sorted(out.parent.iterdir()):
            match = pattern.fullmatch(entry.name)
            if match and match["host"] == _host() and not _alive(int(match["pid"])):
                found.append(entry)
    return found


def _alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill would terminate the process there; never guess
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, another user's
        return True
    return True


def recover_interrupted_swap(out: Path) -> Path | None:
    """If a kill fell between the two renames of a swap, rename the old preparation back."""
    if out.exists() or not out.parent.is_dir():
        return None
    with exclusive_lock(out.parent):
        for retired in _leftovers(out, "replaced"):
            if not out.exists() and (retired / META_NAME).is_file():
                os.rename(retired, out)
                return out
    return None


def _make_parents(directory: Path) -> list[Path]:
    """Create ``directory`` and missing ancestors; return those created, outermost first."""
    missing = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for path in reversed(missing):
        path.mkdir()
    return list(reversed(missing))


@contextlib.contextmanager
def staged_directory(out: Path) -> Iterator[Path]:
    """Yield an empty directory beside ``out``; swap it in for ``out`` when the block succeeds."""
    created: list[Path] = []
    staging: Path | None = None
    try:
        try:
            created = _make_parents(out.parent)
            staging = _hidden(out, "partial")
            staging.mkdir()
        except OSError as error:
            raise _write_failure(out, error) from None
        yield staging
        if out.is_dir():
            staging.chmod(stat.S_IMODE(out.stat().st_mode))
        _swap(staging, out)
    except BaseException:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        for directory in reversed(created):
            with contextlib.suppress(OSError):
                directory.rmdir()
        raise


def _swap(staging: Path, out: Path) -> None:
    # One swap at a time in this directory; a second prepare of the same out waits here.
    with exclusive_lock(out.parent):
        try:
            if out.exists():
                retired = _hidden(out, "replaced")
                os.rename(out, retired)
                try:
                    os.rename(staging, out)
                except BaseException:
                    os.rename(retired, out)
                    raise
                shutil.rmtree(retired, ignore_errors=True)
            else:
                os.rename(staging, out)
        except OSError as error:  # e.g. --out is a mount point, which cannot be renamed
            raise ValueError(
                f"cannot move the new preparation into {out}: {error.strerror or error}; choose "
                "an --out that is an ordinary directory; the previous preparation is unchanged"
            ) from None
        for leftover in _leftovers(out, "partial") + _leftovers(out, "replaced"):
            shutil.rmtree(leftover, ignore_errors=True)
