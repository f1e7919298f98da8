"""Data: text in, packed token shards out, and the loaders the trainer draws batches from.

- :func:`prepare` tokenizes text files, directories, globs, JSONL, Parquet or a Hugging Face
  dataset into a shard directory (format in :mod:`hyperp.data.corpus`).
- :func:`default_corpus` prepares (once, cached) the built-in corpus: the Python standard
  library's own sources, present on every machine.
- :func:`open_corpus` validates and memory-maps a prepared directory or llm.c ``.bin`` shards and
  returns a :class:`Corpus` with ``train`` and ``val`` :class:`TokenSource` splits.
- :class:`TrainLoader` draws seeded, rank-disjoint, resumable training batches;
  :func:`validation_batches` yields a fixed evaluation set independent of the number of ranks.
"""

from hyperp.data.corpus import Corpus, TokenSource, open_corpus, write_llmc_shard
from hyperp.data.loader import TrainLoader, validation_batches
from hyperp.data.preparation import EOT_TOKEN, prepare
from hyperp.data.stdlib_corpus import cache_root, default_corpus

__all__ = [
    "EOT_TOKEN",
    "Corpus",
    "TokenSource",
    "TrainLoader",
    "cache_root",
    "default_corpus",
    "open_corpus",
    "prepare",
    "validation_batches",
    "write_llmc_shard",
]
