"""Which corpus a run trains on: its ``data.path``, else the built-in corpus. One owner of that
lookup for the trainer, the dry run, the sweeps and the reproduction, none of which needs torch
for it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hyperp.data.corpus import Corpus, open_corpus
from hyperp.data.stdlib_corpus import cache_root, corpus_name, default_corpus

if TYPE_CHECKING:
    from hyperp.train.config import RunConfig

__all__ = ["data_vocab_size", "run_corpus"]


def run_corpus(config: RunConfig, *, prepare: bool, log=print) -> Corpus | None:
    """The run's corpus. The built-in one is prepared first when ``prepare`` (else None if it
    is not prepared yet), and a given path is verified once; without ``prepare`` nothing is
    checksummed. An explicit ``model.vocab_size`` reaches llm.c shards."""
    data = config.data
    if data.path:
        verify = "once" if prepare else "never"
        return open_corpus(data.path, vocab_size=config.model.vocab_size, verify=verify)
    built_in = dict(vocab_size=data.vocab_size, max_bytes=data.max_bytes or None)
    if not prepare:
        path = cache_root() / corpus_name(**built_in)
        return open_corpus(path, verify="never") if (path / "meta.json").is_file() else None
    return open_corpus(default_corpus(**built_in, log=log))


def data_vocab_size(config: RunConfig) -> int:
    """The vocabulary the run's data has, cheaply (no checksums): what :meth:`RunConfig.resolve`
    needs for a plan, as in a dry run. The built-in corpus, before it is first prepared, has
    ``data.vocab_size``."""
    corpus = run_corpus(config, prepare=False)
    return corpus.vocab_size if corpus is not None else config.data.vocab_size
