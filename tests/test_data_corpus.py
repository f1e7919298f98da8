"""open_corpus: the llm.c .bin reader, prepared directories, and every kind of broken data."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest

from hyperp.data import TokenSource, open_corpus, prepare, write_llmc_shard
from hyperp.data.corpus import LLMC_MAGIC

pytestmark = pytest.mark.filterwarnings("ignore:the validation split has only:UserWarning")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]
    for index in range(10):
        (root / f"doc{index}.txt").write_text(" ".join(rng.choice(words) for _ in range(200)))
    return prepare([root], root.parent / f"{root.name}_out", vocab_size=300, shard_tokens=400)


def _copy(prepared: Path, target: Path) -> Path:
    target.mkdir()
    for entry in prepared.iterdir():
        (target / entry.name).write_bytes(entry.read_bytes())
    return target


def _write_llmc_by_hand(path: Path, tokens: np.ndarray, *, magic=LLMC_MAGIC, version=1, count=None):
    """The format written field by field, independently of write_llmc_shard."""
    header = np.zeros(256, dtype="<i4")
    header[0], header[1] = magic, version
    header[2] = len(tokens) if count is None else count
    path.write_bytes(header.tobytes() + np.asarray(tokens, dtype="<u2").tobytes())


def test_llmc_reader_on_a_file_written_in_that_format(tmp_path):
    train = np.arange(1000, dtype=np.int64) % 50257
    val = (np.arange(300, dtype=np.int64) * 7) % 50257
    _write_llmc_by_hand(tmp_path / "fineweb_train_000001.bin", train[:600])
    _write_llmc_by_hand(tmp_path / "fineweb_train_000002.bin", train[600:])
    _write_llmc_by_hand(tmp_path / "fineweb_val_000000.bin", val)
    corpus = open_corpus(tmp_path)
    assert corpus.format == "llm.c" and corpus.vocab_size == 50257 and corpus.eot_id == 50256
    assert corpus.tokenizer_path is None
    assert len(corpus.train) == 1000 and len(corpus.val) == 300
    assert np.array_equal(corpus.train[:], train) and np.array_equal(corpus.val[:], val)
    # Slices across the shard boundary and single tokens.
    assert np.array_equal(corpus.train[590:610], train[590:610])
    assert corpus.train[-1] == train[-1] and corpus.train[600] == train[600]
    # A glob of the same files, and the vocabulary override.
    globbed = open_corpus(str(tmp_path / "fineweb_train_*.bin"), vocab_size=50304)
    assert len(globbed.train) == 1000 and len(globbed.val) == 0 and globbed.vocab_size == 50304


def test_write_llmc_shard_matches_the_format(tmp_path):
    tokens = np.array([5, 50256, 0, 65535], dtype=np.int64)
    path = write_llmc_shard(tmp_path / "x_val.bin", tokens)
    raw = path.read_bytes()
    header = np.frombuffer(raw[:1024], dtype="<i4")
    assert header[:3].tolist() == [20240520, 1, 4] and len(raw) == 1024 + 8
    assert np.frombuffer(raw[1024:], dtype="<u2").tolist() == tokens.tolist()
    with pytest.raises(ValueError, match="uint16"):
        write_llmc_shard(tmp_path / "big.bin", np.array([70000]))


def test_llmc_truncated_bad_magic_and_bad_version(tmp_path):
    truncated = tmp_path / "t"
    truncated.mkdir()
    _write_llmc_by_hand(truncated / "train.bin", np.arange(100), count=200)
    with pytest.raises(ValueError, match=r"train.bin is truncated.*200 tokens"):
        open_corpus(truncated)
    short = tmp_path / "short.bin"
    short.write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="shorter than the 1024-byte header"):
        open_corpus(short)
    bad = tmp_path / "bad.bin"
    _write_llmc_by_hand(bad, np.arange(10), magic=12345)
    with pytest.raises(ValueError, match=r"bad.bin is not an llm.c token shard: magic 12345"):
        open_corpus(bad)
    old = tmp_path / "v2.bin"
    _write_llmc_by_hand(old, np.arange(10), version=2)
    with pytest.raises(ValueError, match="version 2"):
        open_corpus(old)


def test_missing_directory_and_empty_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"does not exist.*hyperp prepare"):
        open_corpus(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no token shards"):
        open_corpus(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="no files match"):
        open_corpus(str(tmp_path / "*.bin"))


def test_prepared_directory_opens_and_is_split_into_shards(prepared):
    corpus = open_corpus(prepared)
    meta = json.loads((prepared / "meta.json").read_text())
    assert corpus.format == "hyperp-shards" and corpus.vocab_size == meta["vocab_size"]
    assert len(corpus.train.shards) == len(meta["splits"]["train"]["shards"]) > 1
    assert len(corpus.train) == meta["splits"]["train"]["tokens"]
    assert corpus.tokenizer_path == prepared / "tokenizer.json"


def test_interrupted_preparation_is_reported(prepared, tmp_path):
    copy = _copy(prepared, tmp_path / "c")
    (copy / "meta.json").unlink()
    with pytest.raises(ValueError, match="interrupted `hyperp prepare`"):
        open_corpus(copy)


def test_truncated_shard_in_a_prepared_directory(prepared, tmp_path):
    copy = _copy(prepared, tmp_path / "c")
    shard = copy / "train_000000.bin"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(
        ValueError, match=r"train_000000.bin is truncated or corrupt.*hyperp prepare"
    ):
        open_corpus(copy)


def test_missing_shard_in_a_prepared_directory(prepared, tmp_path):
    copy = _copy(prepared, tmp_path / "c")
    (copy / "train_000001.bin").unlink()
    with pytest.raises(
        FileNotFoundError, match=r"train_000001\.bin listed in meta\.json is missing"
    ):
        open_corpus(copy)


def test_corrupt_shard_fails_its_checksum(prepared, tmp_path):
    copy = _copy(prepared, tmp_path / "c")
    shard = copy / "val_000000.bin"
    data = bytearray(shard.read_bytes())
    data[3] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"val_000000.bin is corrupt: sha256"):
        open_corpus(copy)
    # Sizes are still checked when hashing is switched off; the flip itself then goes unnoticed.
    assert len(open_corpus(copy, verify="never").val) == len(open_corpus(prepared).val)


def test_verified_shards_are_not_rehashed_until_they_change(prepared, tmp_path, monkeypatch):
    import hyperp.data.corpus as corpus_module

    copy = _copy(prepared, tmp_path / "c")
    open_corpus(copy)
    assert (copy / ".verified.json").is_file()
    calls = []
    real = corpus_module.sha256_file
    monkeypatch.setattr(corpus_module, "sha256_file", lambda p: calls.append(p) or real(p))
    open_corpus(copy)
    assert calls == []
    open_corpus(copy, verify="always")
    assert len(calls) == len(list(copy.glob("*.bin")))


def test_bad_meta_json(prepared, tmp_path):
    copy = _copy(prepared, tmp_path / "c")
    (copy / "meta.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"meta\.json is not valid JSON"):
        open_corpus(copy)


def test_token_source_windows_stay_inside_shards():
    shards = [
        np.arange(0, 10, dtype=np.uint16),
        np.arange(100, 103, dtype=np.uint16),
        np.arange(200, 206, dtype=np.uint16),
    ]
    source = TokenSource(shards, ["a", "b", "c"])
    assert len(source) == 19
    # Windows of 4 tokens: 7 in the first shard, none in the 3-token one, 3 in the last.
    assert source.count_windows(4) == 10
    windows = source.gather_windows(np.arange(10), 4)
    assert windows.dtype == np.int64
    assert windows[0].tolist() == [0, 1, 2, 3] and windows[6].tolist() == [6, 7, 8, 9]
    assert windows[7].tolist() == [200, 201, 202, 203] and windows[9].tolist() == [
        202,
        203,
        204,
        205,
    ]
    with pytest.raises(IndexError):
        source.gather_windows(np.array([10]), 4)
    assert source[8:12].tolist() == [8, 9, 100, 101]


def test_load_tokenizer_decodes_the_corpus(prepared, tmp_path):
    corpus = open_corpus(prepared)
    text = corpus.load_tokenizer().decode(corpus.train[1:40].tolist())
    assert text.split()[0] in [
        "alpha",
        "beta",
        "gamma",
        "delta",
        "epsilon",
        "zeta",
        "eta",
        "theta",
        "iota",
        "kappa",
    ]
    write_llmc_shard(tmp_path / "x.bin", np.arange(10))
    with pytest.raises(ValueError, match=r"no tokenizer\.json"):
        open_corpus(tmp_path / "x.bin").load_tokenizer()


# -- a shard changed after it was verified ------------------------------------------------------


def _change_keeping_mtime(path: Path, offset: int) -> None:
    info = path.stat()
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))
    assert path.stat().st_mtime_ns == info.st_mtime_ns


def test_shard_changed_after_verification_is_caught_even_with_its_mtime_kept(prepared, tmp_path):
    copy = _copy(prepared, tmp_path / "c")
    open_corpus(copy)  # verified and recorded
    _change_keeping_mtime(copy / "train_000001.bin", 7)
    with pytest.raises(ValueError, match=r"train_000001\.bin is corrupt: sha256"):
        open_corpus(copy)


def test_large_shard_fingerprint_covers_its_first_and_last_blocks(tmp_path):
    tokens = np.random.default_rng(0).integers(0, 50_000, size=3_000_000)
    write_llmc_shard(tmp_path / "data_train_000000.bin", tokens)
    assert open_corpus(tmp_path).meta["largest_id"] == tokens.max()
    shard = tmp_path / "data_train_000000.bin"
    # A larger id written into the last token, keeping size and mtime: caught on the next open.
    info = shard.stat()
    with open(shard, "r+b") as handle:
        handle.seek(-2, os.SEEK_END)
        handle.write(np.array([60_000], dtype="<u2").tobytes())
    os.utime(shard, ns=(info.st_atime_ns, info.st_mtime_ns))
    with pytest.raises(ValueError, match=r"ids up to 60000.*--model\.vocab_size"):
        open_corpus(tmp_path)


def test_fingerprint_reads_a_few_blocks_not_the_shard(tmp_path, monkeypatch):
    import hyperp.data.stamps as stamps

    write_llmc_shard(tmp_path / "x_train.bin", np.arange(4_000_000) % 50_000)
    open_corpus(tmp_path)
    read = []
    real_open = open

    class Counting:
        def __init__(self, handle):
            self.handle = handle

        def read(self, size=-1):
            data = self.handle.read(size)
            read.append(len(data))
            return data

        def __getattr__(self, name):
            return getattr(self.handle, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

    monkeypatch.setattr(stamps, "open", lambda *a, **k: Counting(real_open(*a, **k)), raising=False)
    open_corpus(tmp_path)
    assert 0 < sum(read) <= 256 * 1024


# -- vocabularies -------------------------------------------------------------------------------


def test_llmc_ids_beyond_gpt2_need_an_explicit_vocab_size(tmp_path):
    tokens = np.array([5, 50256, 60_000, 7] * 300)
    write_llmc_shard(tmp_path / "big_train_000000.bin", tokens)
    with pytest.raises(ValueError, match=r"ids up to 60000.*--model\.vocab_size.*60001") as error:
        open_corpus(tmp_path)
    assert "\n" not in str(error.value)
    corpus = open_corpus(tmp_path, vocab_size=60_001)
    assert corpus.vocab_size == 60_001 and corpus.eot_id is None
    with pytest.raises(ValueError, match=r"--model\.vocab_size 50304 is smaller"):
        open_corpus(tmp_path, vocab_size=50_304)
    # GPT-2 data with a padded vocabulary keeps its end-of-text id.
    write_llmc_shard(tmp_path / "g" / "g_train.bin", np.array([1, 50256, 3] * 100))
    padded = open_corpus(tmp_path / "g", vocab_size=50_304)
    assert padded.vocab_size == 50_304 and padded.eot_id == 50256


def test_largest_id_is_found_once_and_remembered(tmp_path, monkeypatch):
    import hyperp.data.corpus as corpus_module

    write_llmc_shard(tmp_path / "a_train.bin", np.arange(1000))
    scans = []
    real = corpus_module.largest_id
    monkeypatch.setattr(corpus_module, "largest_id", lambda a: scans.append(1) or real(a))
    assert open_corpus(tmp_path).meta["largest_id"] == 999
    assert open_corpus(tmp_path, vocab_size=1000).vocab_size == 1000
    assert len(scans) == 1
    open_corpus(tmp_path, verify="always")
    assert len(scans) == 2


def test_read_only_directory_remembers_its_verification_in_the_cache(tmp_path, monkeypatch):
    import hyperp.data.corpus as corpus_module

    monkeypatch.setenv("HYPERP_CACHE", str(tmp_path / "cache"))
    write_llmc_shard(tmp_path / "ro" / "a_train.bin", np.arange(1000))
    (tmp_path / "ro").chmod(0o555)
    try:
        scans = []
        real = corpus_module.largest_id
        monkeypatch.setattr(corpus_module, "largest_id", lambda a: scans.append(1) or real(a))
        open_corpus(tmp_path / "ro")
        open_corpus(tmp_path / "ro")
        assert len(scans) == 1 and not (tmp_path / "ro/.verified.json").exists()
        assert list((tmp_path / "cache").rglob("*.json"))
    finally:
        (tmp_path / "ro").chmod(0o755)


def test_prepared_vocabulary_can_be_padded_not_shrunk(prepared):
    meta = json.loads((prepared / "meta.json").read_text())
    vocab = meta["vocab_size"]
    assert open_corpus(prepared, vocab_size=vocab + 64).vocab_size == vocab + 64
    with pytest.raises(ValueError, match=rf"--model\.vocab_size {vocab - 1} is smaller"):
        open_corpus(prepared, vocab_size=vocab - 1)
