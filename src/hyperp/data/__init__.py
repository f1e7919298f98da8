"""Data: text in, packed token shards out, and the loaders the trainer draws batches from.

- :func:`prepare` tokenizes text files, directories, globs, JSONL, Parquet (text and JSONL may be
  gzip-compressed) or a Hugging Face dataset into a shard directory (format in
  :mod:`hyperp.data.corpus`). It checks everything before it writes, builds beside the output and
  swaps the result in only on success (:mod:`hyperp.data.staging`).
- :func:`default_corpus` prepares (once, cached) the built-in corpus: the Python standard
  library's own sources, present on every machine.
- :func:`run_corpus` finds a run's corpus (its ``data.path``, else the built-in one) and
  :func:`data_vocab_size` its vocabulary, cheaply, for plans and dry runs.
- :func:`open_corpus` validates and memory-maps a prepared directory or llm.c ``.bin`` shards and
  returns a :class:`Corpus` with ``train`` and ``val`` :class:`TokenSource` splits; shards are
  read in full once and recognised by a cheap fingerprint afterwards (:mod:`hyperp.data.stamps`).
- :class:`TrainLoader` draws seeded, rank-disjoint, resumable training batches;
  :func:`validation_batches` yields a fixed evaluation set independent of the number of ranks.

Nothing here runs code from a file: meta.json and verification records are JSON, tokenizers are
HF ``tokenizer.json`` files, shards are raw integers.
"""

from hyperp.data.corpus import (
    Corpus,
    TokenSource,
    load_tokenizer_file,
    open_corpus,
    write_llmc_shard,
)
from hyperp.data.lookup import data_vocab_size, run_corpus
from hyperp.data.preparation import EOT_TOKEN, prepare
from hyperp.data.stdlib_corpus import cache_root, default_corpus

__all__ = [
    "EOT_TOKEN",
    "Corpus",
    "TokenSource",
    "TrainLoader",
    "cache_root",
    "data_vocab_size",
    "default_corpus",
    "load_tokenizer_file",
    "open_corpus",
    "prepare",
    "run_corpus",
    "validation_batches",
    "write_llmc_shard",
]


def __getattr__(name: str):
    # The loaders need torch; `hyperp prepare` and open_corpus do not, and start faster without.
    if name in ("TrainLoader", "validation_batches"):
        from hyperp.data import loader

        return getattr(loader, name)
    raise AttributeError(f"module 'hyperp.data' has no attribute {name!r}")
