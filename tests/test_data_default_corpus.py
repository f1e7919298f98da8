"""default_corpus: the standard-library corpus, prepared once into the cache and reused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import hyperp.data.stdlib_corpus as stdlib_corpus
from hyperp.data import cache_root, default_corpus, open_corpus

pytestmark = pytest.mark.filterwarnings("ignore:the validation split has only:UserWarning")

SRC = str(Path(__file__).resolve().parents[1] / "src")
SMALL = 200_000


def test_stdlib_files_are_capped_and_exclude_site_packages():
    files = stdlib_corpus.stdlib_source_files(SMALL)
    assert files and sum(f.stat().st_size for f in files) <= max(SMALL, files[0].stat().st_size)
    assert all(f.suffix == ".py" and "site-packages" not in f.parts for f in files)
    root = Path(sysconfig.get_paths()["stdlib"])
    assert all(root in f.parents for f in files)
    # A cap takes a spread of the library, not one package.
    assert len({f.relative_to(root).parts[0] for f in files}) > 3
    everything = stdlib_corpus.stdlib_source_files()
    assert len(everything) > len(files) > 0
    with pytest.raises(ValueError, match="max_bytes"):
        stdlib_corpus.stdlib_source_files(0)


def test_cache_root_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("HYPERP_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "b"))
    assert cache_root(tmp_path / "c") == tmp_path / "c"
    assert cache_root() == tmp_path / "a"
    monkeypatch.delenv("HYPERP_CACHE")
    assert cache_root() == tmp_path / "b" / "hyperp"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_root() == Path.home() / ".cache" / "hyperp"


def test_default_corpus_is_prepared_once_and_reused(tmp_path, monkeypatch):
    path = default_corpus(tmp_path, vocab_size=400, max_bytes=SMALL)
    assert path.parent == tmp_path
    name = path.name
    assert f"{sys.version_info.major}.{sys.version_info.minor}" in name
    assert "v400" in name and f"max{SMALL}" in name
    corpus = open_corpus(path)
    assert corpus.vocab_size <= 400 and len(corpus.train) > 10_000 and len(corpus.val) > 0
    meta = json.loads((path / "meta.json").read_text())
    assert meta["input_characters"] <= SMALL
    # The second call must not prepare again.
    monkeypatch.setattr(
        stdlib_corpus, "prepare", lambda *a, **k: pytest.fail("prepared a cached corpus again")
    )
    assert default_corpus(tmp_path, vocab_size=400, max_bytes=SMALL) == path
    # Nothing but the corpus and its lock file is left in the cache.
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([name, f"{name}.lock"])


def test_concurrent_callers_prepare_once(tmp_path):
    code = (
        "import sys; from hyperp.data import default_corpus; "
        "print(default_corpus(sys.argv[1], vocab_size=300, max_bytes=100000, log=print))"
    )
    env = {**os.environ, "PYTHONPATH": SRC}
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path)], env=env, stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [process.communicate(timeout=120)[0] for process in processes]
    assert all(process.returncode == 0 for process in processes)
    paths = {output.strip().splitlines()[-1] for output in outputs}
    assert len(paths) == 1
    assert sum(output.count("wrote ") for output in outputs) == 1
    open_corpus(paths.pop(), verify="always")


@pytest.mark.slow
def test_full_default_corpus(tmp_path):
    """The whole standard library (about a minute on two cores)."""
    corpus = open_corpus(default_corpus(tmp_path))
    assert corpus.vocab_size == 8192 and len(corpus.train) > 1_000_000 and len(corpus.val) > 10_000
    tokenizer = corpus.load_tokenizer()
    assert "def" in tokenizer.decode(corpus.train[:2000].tolist())
