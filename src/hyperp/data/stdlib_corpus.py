"""The built-in default corpus: the running Python's standard-library sources.

Every Python installation carries its standard library as ``.py`` files (about 30 MB of real,
varied code and prose in docstrings), so ``hyperp train`` works with no download and no install.
The corpus is prepared once into the user's cache directory and reused afterwards.
"""

from __future__ import annotations

import hashlib
import os
import sys
import sysconfig
from pathlib import Path

from hyperp.data.preparation import prepare
from hyperp.data.progress import ProgressMode
from hyperp.data.staging import exclusive_lock

__all__ = ["DEFAULT_VAL_FRACTION", "cache_root", "default_corpus", "stdlib_source_files"]

# 2% of the text (~600k characters of ~31M), about 200k tokens of validation.
DEFAULT_VAL_FRACTION = 0.02
# Part of the cache name: bumped when the same sources would be prepared differently, so that a
# cache made by an earlier version is not taken for the current corpus (2: split by pieces).
_CORPUS_REVISION = 2
_SKIPPED_DIRS = {"site-packages", "dist-packages", "__pycache__"}


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """``cache_dir``, else ``$HYPERP_CACHE``, else ``$XDG_CACHE_HOME/hyperp``, else ~/.cache/hyperp."""
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get("HYPERP_CACHE"):
        return Path(os.environ["HYPERP_CACHE"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "hyperp"
    return Path.home() / ".cache" / "hyperp"


def stdlib_source_files(max_bytes: int | None = None) -> list[Path]:
    """The standard library's ``.py`` files (no site-packages), optionally capped in total size.

    Files are ordered by a hash of their relative path, so that a ``max_bytes`` cap takes a spread
    of modules (not only those starting with "a"); files are taken in that order while the running
    total stays within ``max_bytes`` (at least one file is always taken).
    """
    if max_bytes is not None and (not isinstance(max_bytes, int) or max_bytes < 1):
        raise ValueError(f"max_bytes must be a positive integer or None, not {max_bytes!r}")
    root = Path(sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise FileNotFoundError(
            f"the Python standard library sources are not at {root}; pass a data directory instead"
        )
    files: list[tuple[str, Path]] = []
    for directory, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIPPED_DIRS)
        for name in filenames:
            if name.endswith(".py"):
                path = Path(directory) / name
                relative = path.relative_to(root).as_posix()
                files.append((hashlib.sha256(relative.encode()).hexdigest(), path))
    files.sort()
    if not files:
        raise FileNotFoundError(f"no .py files under {root}; pass a data directory instead")
    chosen, total = [], 0
    for _, path in files:
        size = path.stat().st_size
        if max_bytes is not None and chosen and total + size > max_bytes:
            continue
        chosen.append(path)
        total += size
    return chosen


def corpus_name(vocab_size: int, max_bytes: int | None) -> str:
    version = ".".join(map(str, sys.version_info[:3]))
    size = "all" if max_bytes is None else f"max{max_bytes}"
    return f"stdlib-{sys.implementation.name}{version}-v{vocab_size}-{size}-r{_CORPUS_REVISION}"


def default_corpus(
    cache_dir: str | os.PathLike | None = None,
    *,
    vocab_size: int = 8192,
    max_bytes: int | None = None,
    log=None,
    progress: ProgressMode = "lines",
) -> Path:
    """Prepare (once) and return the directory of the built-in standard-library corpus.

    The corpus lives in ``cache_root(cache_dir) / "stdlib-cpython3.11.7-v8192-all-r2"`` (the name
    encodes the Python implementation and version, ``vocab_size``, ``max_bytes`` and the revision
    of the preparation). A second call with the same arguments returns the cached directory
    without preparing again. ``max_bytes`` caps the source text used (see
    :func:`stdlib_source_files`); None uses all of it. ``log`` and ``progress`` are passed to
    :func:`prepare` (periodic progress lines through ``log`` by default).

    Safe when several processes call it at once: preparation runs under a lock file, and
    :func:`prepare` builds beside the final directory and renames it into place only when
    complete, so a crash never leaves a directory that looks finished.
    """
    root = cache_root(cache_dir)
    final = root / corpus_name(vocab_size, max_bytes)
    if (final / "meta.json").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(root / f"{final.name}.lock"):
        if not (final / "meta.json").is_file():
            prepare(
                stdlib_source_files(max_bytes),
                final,
                vocab_size=vocab_size,
                val_fraction=DEFAULT_VAL_FRACTION,
                seed=0,
                command=f"hyperp default corpus: python {sys.version.split()[0]} stdlib sources",
                log=log,
                progress=progress,
            )
    return final
