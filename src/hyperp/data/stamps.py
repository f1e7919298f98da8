"""What was verified about a directory's shards, and a cheap test that they are unchanged since.

Verifying a shard reads all of it: its sha256 (prepared directories) and its largest token id
(llm.c shards carry no checksum, and their ids must fit the model's vocabulary). That is done once
per shard; the result is recorded in ``.verified.json`` beside the shards or, when that directory
is not writable (a shared, read-only data set), in the user cache under ``verified/``.

A record is trusted on a later open only when the shard's size, mtime and inode are the recorded
ones and its *fingerprint* matches: a blake2b hash of the size and of ``FINGERPRINT_BLOCKS`` blocks
of ``FINGERPRINT_BLOCK_BYTES`` at fixed offsets spread evenly from the first byte to the last (the
whole file when it is smaller than that). That is 16 small reads per shard whatever its size, and
it catches a shard rewritten with its mtime kept (``cp -p``, ``rsync -t``, a restored backup),
unless every changed byte lies between the sampled blocks; ``verify="always"`` re-reads it all.
A copied directory has new inodes, so its shards are verified again at their new place.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from hyperp.data.staging import STAMP_NAME, writable
from hyperp.fileio import atomic_write_json

__all__ = ["FINGERPRINT_BLOCKS", "FINGERPRINT_BLOCK_BYTES", "VerificationRecords", "fingerprint"]

FINGERPRINT_BLOCKS = 16
FINGERPRINT_BLOCK_BYTES = 4096
_RECORDS_VERSION = 2


def fingerprint(path: Path, size: int) -> str:
    """blake2b of ``size`` and of FINGERPRINT_BLOCKS fixed, evenly spread blocks of the file."""
    digest = hashlib.blake2b(size.to_bytes(8, "little"), digest_size=16)
    with open(path, "rb") as handle:
        if size <= FINGERPRINT_BLOCKS * FINGERPRINT_BLOCK_BYTES:
            digest.update(handle.read())
        else:
            last_start = size - FINGERPRINT_BLOCK_BYTES
            for index in range(FINGERPRINT_BLOCKS):
                handle.seek(index * last_start // (FINGERPRINT_BLOCKS - 1))
                digest.update(handle.read(FINGERPRINT_BLOCK_BYTES))
    return digest.hexdigest()


def _identity(info: os.stat_result) -> dict[str, int]:
    return {"size": info.st_size, "mtime_ns": info.st_mtime_ns, "inode": info.st_ino}


class VerificationRecords:
    """The verification records of the shards in one directory (see the module docstring)."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.path = self._location(directory)
        self.records = self._load()
        self.changed = False

    @staticmethod
    def _location(directory: Path) -> Path:
        if writable(directory):
            return directory / STAMP_NAME
        from hyperp.data.stdlib_corpus import cache_root  # imported late: it imports prepare

        key = hashlib.sha256(os.fsencode(directory.resolve())).hexdigest()[:32]
        return cache_root() / "verified" / f"{key}.json"

    def _load(self) -> dict[str, dict[str, Any]]:
        # Plain JSON; anything unexpected (an older layout, a damaged or planted file) counts as
        # no record, so the shards are simply verified again.
        try:
            stored = json.loads(self.path.read_bytes())
        except (OSError, ValueError, RecursionError):
            return {}
        if not isinstance(stored, dict) or stored.get("version") != _RECORDS_VERSION:
            return {}
        shards = stored.get("shards")
        if not isinstance(shards, dict):
            return {}
        return {name: record for name, record in shards.items() if isinstance(record, dict)}

    def lookup(self, shard: Path, info: os.stat_result) -> dict[str, Any] | None:
        """The shard's record if it is unchanged since it was verified, else None."""
        record = self.records.get(shard.name)
        if record is None or any(record.get(k) != v for k, v in _identity(info).items()):
            return None
        if record.get("fingerprint") != fingerprint(shard, info.st_size):
            return None
        return record

    def remember(self, shard: Path, info: os.stat_result, **facts: Any) -> None:
        fingerprinted = fingerprint(shard, info.st_size)
        self.records[shard.name] = {**_identity(info), "fingerprint": fingerprinted, **facts}
        self.changed = True

    def save(self) -> None:
        if not self.changed:
            return
        stored = {
            "version": _RECORDS_VERSION,
            "directory": str(self.directory.resolve()),
            "shards": self.records,
        }
        # Nowhere to record it (a full disk, an unwritable cache): verified again next time.
        with contextlib.suppress(OSError):
            atomic_write_json(self.path, stored)
        self.changed = False
