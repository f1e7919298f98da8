"""How long does opening a large corpus take, once it has been verified?

Writes a synthetic corpus of ``--gigabytes`` (default 2) in both formats, a prepared directory
(uint16 shards listed in meta.json with their sha256) and llm.c shards, then times in one process:

- ``never``: ``open_corpus(verify="never")``, sizes only: the baseline, the least an open can do;
- ``first``: the first open, which reads every shard in full (sha256 and largest id);
- ``later``: every later open, which checks each shard's recorded size, mtime, inode and
  fingerprint (16 blocks of 4 KiB);
- ``always``: ``verify="always"``, which reads everything on every open.

Each figure is the median of ``--repeats`` runs, interleaved. The page cache is warm (the files
were just written): ``first`` and ``always`` are then bound by hashing, not by the disk, and a
cold cache makes them slower still while ``later`` stays at a few dozen small reads per shard.

    PYTHONPATH=src python benchmarks/corpus_open.py --gigabytes 2
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from hyperp.data import open_corpus
from hyperp.data.corpus import LLMC_HEADER_INTS, LLMC_MAGIC, LLMC_VERSION

CHUNK_TOKENS = 1 << 24


def write_shards(directory: Path, total_bytes: int, shards: int, llmc: bool) -> list[dict]:
    """Random uint16 shards written chunk by chunk; returns meta.json's shard entries."""
    directory.mkdir(parents=True)
    rng = np.random.default_rng(0)
    tokens_per_shard = total_bytes // 2 // shards
    entries = []
    for index in range(shards):
        name = f"{'data_' if llmc else ''}train_{index:06d}.bin"
        digest = hashlib.sha256()
        with open(directory / name, "wb") as handle:
            if llmc:
                header = np.zeros(LLMC_HEADER_INTS, dtype="<i4")
                header[:3] = LLMC_MAGIC, LLMC_VERSION, tokens_per_shard
                handle.write(header.tobytes())
            left = tokens_per_shard
            while left:
                chunk = rng.integers(0, 50_000, size=min(left, CHUNK_TOKENS), dtype="<u2")
                data = chunk.tobytes()
                digest.update(data)
                handle.write(data)
                left -= len(chunk)
        entries.append({"file": name, "tokens": tokens_per_shard, "sha256": digest.hexdigest()})
    return entries


def write_prepared(directory: Path, total_bytes: int, shards: int) -> None:
    entries = write_shards(directory, total_bytes, shards, llmc=False)
    meta = {
        "format": "hyperp-shards",
        "format_version": 1,
        "dtype": "uint16",
        "vocab_size": 50_257,
        "eot_id": 50_256,
        "splits": {"train": {"shards": entries}, "val": {"shards": []}},
    }
    (directory / "meta.json").write_text(json.dumps(meta))


def seconds(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def measure(directory: Path, repeats: int) -> dict[str, float]:
    (directory / ".verified.json").unlink(missing_ok=True)
    first = seconds(lambda: open_corpus(directory))
    runs: dict[str, list[float]] = {"never": [], "later": [], "always": []}
    for _ in range(repeats):
        runs["never"].append(seconds(lambda: open_corpus(directory, verify="never")))
        runs["later"].append(seconds(lambda: open_corpus(directory)))
        runs["always"].append(seconds(lambda: open_corpus(directory, verify="always")))
    return {"first": first, **{name: statistics.median(times) for name, times in runs.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gigabytes", type=float, default=2.0)
    parser.add_argument("--shards", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", default=None, help="where to write (default: a temporary dir)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="corpus-open-", dir=args.dir))
    total = int(args.gigabytes * 2**30)
    try:
        write_prepared(root / "prepared", total, args.shards)
        write_shards(root / "llmc", total, args.shards, llmc=True)
        print(f"{args.gigabytes:g} GiB in {args.shards} shards, median of {args.repeats}")
        for kind in ("prepared", "llmc"):
            figures = measure(root / kind, args.repeats)
            print(
                f"{kind:9s} never {figures['never'] * 1e3:8.1f} ms | later "
                f"{figures['later'] * 1e3:8.1f} ms ({figures['later'] / figures['never']:.1f}x "
                f"never) | first {figures['first']:6.2f} s | always {figures['always']:6.2f} s "
                f"({figures['always'] / figures['later']:.0f}x later)"
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
