"""hyperp.data.prepare: inputs, split, meta.json, errors; and the `hyperp prepare` verb."""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hyperp.data import EOT_TOKEN, open_corpus, prepare

pytestmark = pytest.mark.filterwarnings("ignore:the validation split has only:UserWarning")

HYPERP = [sys.executable, "-m", "hyperp"]
WORDS = [
    "the",
    "cat",
    "sat",
    "on",
    "a",
    "mat",
    "while",
    "dogs",
    "ran",
    "far",
    "away",
    "from",
    "every",
    "loud",
    "noise",
    "in",
    "town",
]


def write_docs(directory: Path, count: int, words: int = 120, seed: int = 0) -> list[str]:
    """``count`` text files of ``words`` random words from a small vocabulary; their texts."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    texts = []
    for index in range(count):
        text = " ".join(rng.choice(WORDS) for _ in range(words)) + f"\nfile {index}\n"
        (directory / f"doc{index:03d}.txt").write_text(text)
        texts.append(text)
    return texts


def _meta(path: Path) -> dict:
    return json.loads((path / "meta.json").read_text())


def test_prepare_text_directory_round_trips_through_the_tokenizer(tmp_path):
    from tokenizers import Tokenizer

    texts = write_docs(tmp_path / "text", 12)
    out = prepare([tmp_path / "text"], tmp_path / "out", vocab_size=320, val_fraction=0.2)
    meta = _meta(out)
    corpus = open_corpus(out)
    assert meta["documents"] == 12
    assert meta["splits"]["train"]["documents"] + meta["splits"]["val"]["documents"] == 12
    assert meta["splits"]["val"]["documents"] >= 1
    assert meta["dtype"] == "uint16" and meta["replaced_bytes"] == 0
    assert len(corpus.train) == meta["splits"]["train"]["tokens"] > 0
    # Every document starts with the end-of-text id, so the split holds one EOT per document.
    train_tokens = corpus.train[:]
    assert train_tokens[0] == corpus.eot_id
    assert int((train_tokens == corpus.eot_id).sum()) == meta["splits"]["train"]["documents"]
    # Decoding the train split gives back exactly the training documents.
    tokenizer = Tokenizer.from_file(str(corpus.tokenizer_path))
    pieces = np.split(train_tokens, np.flatnonzero(train_tokens == corpus.eot_id))[1:]
    decoded = {tokenizer.decode(piece[1:].tolist()) for piece in pieces}
    assert decoded <= set(texts) and len(decoded) == meta["splits"]["train"]["documents"]
    # The entropy recorded is that of the train split's token frequencies.
    counts = np.bincount(train_tokens)
    probabilities = counts[counts > 0] / counts.sum()
    assert math.isclose(
        meta["unigram_entropy_nats"], float(-(probabilities * np.log(probabilities)).sum())
    )
    assert 0 < meta["unigram_entropy_nats"] < math.log(meta["vocab_size"])


def test_prepare_jsonl_field_and_glob(tmp_path):
    records = [{"id": i, "body": f"record number {i} says hello world " * 5} for i in range(30)]
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in records[:15]) + "\n\n")
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(r) for r in records[15:]))
    out = prepare([str(tmp_path / "*.jsonl")], tmp_path / "out", vocab_size=300, jsonl_field="body")
    meta = _meta(out)
    assert meta["documents"] == 30 and meta["input_files"] == 2
    with pytest.raises(ValueError, match=r"no field 'text'.*--jsonl-field"):
        prepare([tmp_path / "a.jsonl"], tmp_path / "out2", vocab_size=300)


def test_prepare_parquet_column(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    texts = [f"parquet row {i} with some words in it" * 3 for i in range(25)]
    pq.write_table(pa.table({"content": texts, "n": list(range(25))}), tmp_path / "t.parquet")
    out = prepare(
        [tmp_path / "t.parquet"], tmp_path / "out", vocab_size=300, parquet_column="content"
    )
    assert _meta(out)["documents"] == 25
    with pytest.raises(ValueError, match=r"no column 'text'.*content"):
        prepare([tmp_path / "t.parquet"], tmp_path / "out2", vocab_size=300)


def test_split_is_deterministic_by_content_and_seed(tmp_path):
    write_docs(tmp_path / "text", 40)
    kwargs = dict(vocab_size=300, val_fraction=0.25)
    first = _meta(prepare([tmp_path / "text"], tmp_path / "a", seed=3, **kwargs))
    second = _meta(prepare([tmp_path / "text"], tmp_path / "b", seed=3, **kwargs))
    other = _meta(prepare([tmp_path / "text"], tmp_path / "c", seed=4, **kwargs))
    assert first["splits"]["val"]["shards"] == second["splits"]["val"]["shards"]
    assert first["splits"]["train"]["shards"] == second["splits"]["train"]["shards"]
    assert (tmp_path / "a/tokenizer.json").read_bytes() == (
        tmp_path / "b/tokenizer.json"
    ).read_bytes()
    # A different seed picks different validation documents (40 docs, ~10 in val).
    val_a = open_corpus(tmp_path / "a").val[:]
    val_c = open_corpus(tmp_path / "c").val[:]
    assert not np.array_equal(val_a, val_c)
    assert other["documents"] == first["documents"]


def test_split_does_not_depend_on_input_order(tmp_path):
    write_docs(tmp_path / "text", 30)
    files = sorted((tmp_path / "text").iterdir())
    tokenizer = prepare(files, tmp_path / "ref", vocab_size=300) / "tokenizer.json"
    kwargs = dict(tokenizer=tokenizer, val_fraction=0.3)
    forward = open_corpus(prepare(files, tmp_path / "f", **kwargs))
    backward = open_corpus(prepare(files[::-1], tmp_path / "b", **kwargs))
    assert len(forward.val) == len(backward.val)
    assert sorted(forward.val[:].tolist()) == sorted(backward.val[:].tolist())


def test_undecodable_bytes_are_replaced_and_counted(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in/good.txt").write_text("plain text " * 40)
    (tmp_path / "in/bad.txt").write_bytes(b"caf\xe9 and \xff\xfe more " * 3 + b"ok " * 30)
    (tmp_path / "in/bad.jsonl").write_bytes(b'{"text": "json \xc3 line"}\n')
    out = prepare([tmp_path / "in"], tmp_path / "out", vocab_size=300, val_fraction=0.0)
    meta = _meta(out)
    assert meta["replaced_bytes"] == 3 * 3 + 1
    assert meta["documents"] == 3 and meta["splits"]["val"]["tokens"] == 0


def test_binary_files_in_directories_are_skipped(tmp_path):
    write_docs(tmp_path / "in", 3)
    (tmp_path / "in/image.png").write_bytes(b"\x89PNG\x00\x00\x01" * 100)
    meta = _meta(prepare([tmp_path / "in"], tmp_path / "out", vocab_size=300))
    assert meta["skipped_binary_files"] == 1 and meta["documents"] == 3


def test_marker_splits_plain_text_into_documents_and_literal_marker_in_json_stays_text(tmp_path):
    (tmp_path / "stories.txt").write_text(
        f"once upon a time\n{EOT_TOKEN}\nthe end came\n{EOT_TOKEN}\n"
    )
    meta = _meta(prepare([tmp_path / "stories.txt"], tmp_path / "out", vocab_size=300))
    assert meta["documents"] == 2
    (tmp_path / "m.jsonl").write_text(json.dumps({"text": f"a {EOT_TOKEN} b " * 20}) + "\n")
    out = prepare([tmp_path / "m.jsonl"], tmp_path / "out2", vocab_size=300)
    corpus = open_corpus(out)
    # The literal marker inside a JSON document is encoded as text: one EOT, the document's own.
    assert int((corpus.train[:] == corpus.eot_id).sum()) == 1


def test_empty_input_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty/a.txt").write_text("")
    with pytest.raises(ValueError, match="no text found"):
        prepare([tmp_path / "empty"], tmp_path / "out", vocab_size=300)
    with pytest.raises(ValueError, match="no inputs"):
        prepare([], tmp_path / "out", vocab_size=300)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        prepare([tmp_path / "nope.txt"], tmp_path / "out", vocab_size=300)
    with pytest.raises(FileNotFoundError, match="no files match"):
        prepare([str(tmp_path / "*.md")], tmp_path / "out", vocab_size=300)
    # A failed preparation never leaves a directory that looks finished.
    assert not (tmp_path / "out/meta.json").exists()


def test_vocab_too_small_and_bad_options_are_clear_errors(tmp_path):
    write_docs(tmp_path / "text", 2)
    with pytest.raises(ValueError, match=r"vocab size 100 is too small.*--vocab-size 257"):
        prepare([tmp_path / "text"], tmp_path / "out", vocab_size=100)
    with pytest.raises(ValueError, match="--val-fraction must be in"):
        prepare([tmp_path / "text"], tmp_path / "out", val_fraction=1.0)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy/notes.md").write_text("mine")
    with pytest.raises(ValueError, match="holds files that prepare did not write"):
        prepare([tmp_path / "text"], tmp_path / "busy", vocab_size=300)


def test_given_tokenizer_and_small_shards(tmp_path):
    write_docs(tmp_path / "text", 10)
    first = prepare([tmp_path / "text"], tmp_path / "a", vocab_size=300, val_fraction=0.0)
    second = prepare(
        [tmp_path / "text"],
        tmp_path / "b",
        tokenizer=first / "tokenizer.json",
        val_fraction=0.0,
        shard_tokens=500,
    )
    meta = _meta(second)
    shards = meta["splits"]["train"]["shards"]
    assert len(shards) > 1 and all(s["tokens"] == 500 for s in shards[:-1])
    # Same tokenizer, same documents: the same token stream, only cut into more files.
    assert np.array_equal(open_corpus(first).train[:], open_corpus(second).train[:])


def test_rerun_replaces_an_earlier_preparation(tmp_path):
    write_docs(tmp_path / "text", 4)
    prepare([tmp_path / "text"], tmp_path / "out", vocab_size=300, shard_tokens=100)
    many = len(list((tmp_path / "out").glob("train_*.bin")))
    prepare([tmp_path / "text"], tmp_path / "out", vocab_size=300)
    assert many > 1 and len(list((tmp_path / "out").glob("train_*.bin"))) == 1
    open_corpus(tmp_path / "out", verify="always")


def test_hf_dataset_from_a_local_copy(tmp_path, monkeypatch):
    """The HF path with a stand-in for `datasets` (the real library is an optional extra)."""
    import sys
    import types

    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "state.json").write_text("{}")
    rows = [{"text": f"hf row {i} " * 10, "label": i} for i in range(8)]

    class FakeDataset(list):
        column_names = ("text", "label")

    fake = types.ModuleType("datasets")
    fake.DatasetDict = dict
    fake.load_from_disk = lambda path: FakeDataset(rows) if Path(path) == saved else None
    monkeypatch.setitem(sys.modules, "datasets", fake)
    meta = _meta(prepare([], tmp_path / "out", vocab_size=300, hf_dataset=str(saved)))
    assert meta["documents"] == 8 and meta["hf_dataset"] == str(saved)
    with pytest.raises(ValueError, match="--hf-field"):
        prepare([], tmp_path / "out2", vocab_size=300, hf_dataset=str(saved), hf_field="body")


def _run_verb(argv: list[str]) -> int:
    from hyperp.cli import prepare as prepare_verb

    parser = argparse.ArgumentParser(prog="hyperp")
    sub = parser.add_subparsers(dest="verb", required=True)
    prepare_verb.register(sub)
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_prepare_prints_a_summary(tmp_path, capsys):
    from hyperp.cli import VERBS

    assert VERBS["prepare"] == "hyperp.cli.prepare"
    write_docs(tmp_path / "text", 6)
    code = _run_verb(
        [
            "prepare",
            str(tmp_path / "text"),
            "--out",
            str(tmp_path / "out"),
            "--vocab-size",
            "300",
            "--quiet",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0
    assert "train" in printed and str(tmp_path / "out") in printed
    meta = _meta(tmp_path / "out")
    assert f"{meta['splits']['train']['tokens']:,} tokens" in printed
    assert meta["command"].startswith("hyperp ")


def test_output_inside_an_input_directory_is_not_read_back(tmp_path):
    write_docs(tmp_path / "text", 5)
    first = _meta(prepare([tmp_path / "text"], tmp_path / "text/tok", vocab_size=300))
    second = _meta(prepare([tmp_path / "text"], tmp_path / "text/tok", vocab_size=300))
    assert first["documents"] == second["documents"] == 5
    assert second["tokenizer_seconds"] >= 0 and second["encode_seconds"] >= 0


def test_large_vocabulary_uses_uint32_shards(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    # A word-level tokenizer whose last words have ids above 65535, written by hand.
    vocab = {"[UNK]": 0, **{f"w{i}": i + 1 for i in range(70_000)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.save(str(tmp_path / "big.json"))
    (tmp_path / "a.txt").write_text("w5 w69999 w65536 w12")
    (tmp_path / "b.txt").write_text("w1 w2 w3")
    out = prepare(
        [tmp_path / "a.txt", tmp_path / "b.txt"],
        tmp_path / "out",
        tokenizer=tmp_path / "big.json",
        val_fraction=0.0,
    )
    meta = _meta(out)
    corpus = open_corpus(out)
    # The end-of-text token was added after the 70001 words.
    assert meta["dtype"] == "uint32" and corpus.eot_id == 70_001 == meta["vocab_size"] - 1
    assert corpus.train.dtype == np.dtype("<u4")
    assert corpus.train[:].tolist() == [70_001, 6, 70_000, 65_537, 13, 70_001, 2, 3, 4]


def test_cli_reports_user_mistakes_in_one_line(tmp_path, monkeypatch, capsys):
    import hyperp.cli as cli

    # Only this verb, so the test does not depend on the other verbs' modules.
    monkeypatch.setattr(cli, "VERBS", {"prepare": "hyperp.cli.prepare"})
    code = cli.main(["prepare", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "o")])
    error = capsys.readouterr().err.strip()
    assert code == 2
    assert error.startswith("hyperp prepare: error: input") and "does not exist" in error
    assert "\n" not in error and "Traceback" not in error
    code = cli.main(["prepare", "--out", str(tmp_path / "o")])
    assert code == 2 and "at least one INPUT" in capsys.readouterr().err


# -- what prepare accepts, skips and warns about ---------------------------------------------


def test_binary_files_named_explicitly_are_skipped_with_a_warning(tmp_path):
    write_docs(tmp_path / "text", 3)
    program = tmp_path / "ls.txt"
    program.write_bytes(Path("/bin/ls").read_bytes() if Path("/bin/ls").exists() else b"\x7fELF\0")
    with pytest.warns(UserWarning, match=r"skipped 1 binary file.*ls\.txt"):
        meta = _meta(prepare([program, tmp_path / "text"], tmp_path / "out", vocab_size=300))
    assert meta["documents"] == 3 and meta["skipped_binary_files"] == 1
    with pytest.raises(ValueError, match=r"every input file looks binary.*ls\.txt"):
        prepare([program], tmp_path / "out2", vocab_size=300)
    assert not (tmp_path / "out2").exists()


def test_parquet_files_in_a_directory_are_read(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    (tmp_path / "in").mkdir()
    pq.write_table(
        pa.table({"text": [f"row {i} " * 20 for i in range(6)]}), tmp_path / "in/a.parquet"
    )
    assert _meta(prepare([tmp_path / "in"], tmp_path / "out", vocab_size=300))["documents"] == 6


def test_gzip_inputs_are_read(tmp_path):
    import gzip

    texts = write_docs(tmp_path / "plain", 4)
    (tmp_path / "gz").mkdir()
    for index, text in enumerate(texts):
        (tmp_path / f"gz/doc{index}.txt.gz").write_bytes(gzip.compress(text.encode()))
    records = "".join(json.dumps({"text": t}) + "\n" for t in texts)
    (tmp_path / "gz/all.jsonl.gz").write_bytes(gzip.compress(records.encode()))
    tokenizer = prepare([tmp_path / "plain"], tmp_path / "ref", vocab_size=300) / "tokenizer.json"
    kwargs = dict(tokenizer=tokenizer, val_fraction=0.0)
    plain = open_corpus(prepare([tmp_path / "plain"], tmp_path / "a", **kwargs)).train[:]
    from_gz = open_corpus(prepare([tmp_path / "gz"], tmp_path / "b", **kwargs))
    # The directory walk found both gzip files; each text appears twice (text and JSONL).
    assert _meta(tmp_path / "b")["documents"] == 8
    assert sorted(from_gz.train[:].tolist()) == sorted(plain.tolist() * 2)
    (tmp_path / "bad.txt.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match=r"bad\.txt\.gz is not a readable gzip file"):
        prepare([tmp_path / "bad.txt.gz"], tmp_path / "c", vocab_size=300)
    (tmp_path / "cut.txt.gz").write_bytes(gzip.compress(texts[0].encode() * 50)[:-20])
    with pytest.raises(ValueError, match=r"cut\.txt\.gz is not a readable gzip file"):
        prepare([tmp_path / "cut.txt.gz"], tmp_path / "c", vocab_size=300)


def _validation_characters(out: Path) -> tuple[int, int]:
    corpus = open_corpus(out)
    tokenizer = corpus.load_tokenizer()

    def characters(tokens):
        return len(tokenizer.decode(tokens[tokens != corpus.eot_id].tolist()))

    return characters(corpus.val[:]), characters(corpus.train[:])


def test_validation_split_holds_the_requested_share_of_the_text(tmp_path):
    """Documents of very different sizes: the split is by text, not by document count."""
    rng = random.Random(5)
    (tmp_path / "in").mkdir()
    (tmp_path / "in/book.txt").write_text(
        "\n".join(" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(3000))
    )
    write_docs(tmp_path / "in/notes", 30, words=60)
    out = prepare([tmp_path / "in"], tmp_path / "out", vocab_size=300, val_fraction=0.1)
    val, train = _validation_characters(out)
    share = val / (val + train)
    assert 0.1 <= share <= 0.1 + 65_536 / (val + train), share
    # A single large file is split too (pieces of at most 64 KiB, cut at newlines).
    single = prepare([tmp_path / "in/book.txt"], tmp_path / "single", vocab_size=300)
    val, train = _validation_characters(single)
    assert val > 0 and train > 0


def test_default_validation_split_is_usable_on_a_skewed_corpus():
    """The issue's corpus: ~800 documents of very different sizes, 14M tokens (~56M characters).
    The old default (0.5% of the documents) held out 4 documents and 3,328 tokens."""
    from hyperp.data.preparation import choose_validation

    rng = np.random.default_rng(0)
    characters = np.minimum(rng.lognormal(9.0, 2.0, size=800), 65_536).astype(np.int64)
    characters = (characters * (56e6 / characters.sum())).astype(np.int64) + 1
    keys = rng.random(len(characters))
    is_val, fraction = choose_validation(keys, characters, None)
    held_out = int(characters[is_val].sum())
    assert held_out >= 2_000_000 and held_out <= 0.1 * characters.sum()
    assert 0 < fraction < 0.1 and not is_val.all()
    # An explicit fraction is a share of the text.
    is_val, fraction = choose_validation(keys, characters, 0.01)
    assert fraction == 0.01
    assert 0.01 <= characters[is_val].sum() / characters.sum() < 0.01 + 65_536 / 56e6


def test_a_small_validation_split_warns_and_names_the_option(tmp_path):
    write_docs(tmp_path / "text", 10)
    with pytest.warns(
        UserWarning, match=r"validation split has only [\d,]+ tokens.*--val-fraction"
    ):
        prepare([tmp_path / "text"], tmp_path / "out", vocab_size=300)


# -- progress -----------------------------------------------------------------------------------


def test_progress_lines_when_stderr_is_not_a_terminal(tmp_path, monkeypatch, capsys):
    import hyperp.cli as cli
    import hyperp.data.progress as progress

    monkeypatch.setattr(progress, "LINE_SECONDS", 0.0)
    monkeypatch.setattr(cli, "VERBS", {"prepare": "hyperp.cli.prepare"})
    write_docs(tmp_path / "text", 20)
    code = cli.main(["prepare", str(tmp_path / "text"), "--out", str(tmp_path / "o")])
    assert code == 0
    lines = capsys.readouterr().err.splitlines()
    for phase in ("reading", "tokenizer", "encoding"):
        periodic = [line for line in lines if re.match(rf"prepare: {phase} +\d+%", line)]
        assert periodic and "100%" in periodic[-1], (phase, lines)
    assert any("ETA" in line for line in lines)
    assert not any("\r" in line for line in lines)


def test_progress_bar_on_a_terminal(tmp_path):
    import fcntl
    import pty
    import struct
    import termios

    from support import subprocess_env

    write_docs(tmp_path / "text", 20)
    leader, follower = pty.openpty()
    # A terminal 100 columns wide (a fresh pseudo-terminal has none).
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    process = subprocess.Popen(
        [
            *HYPERP,
            "prepare",
            str(tmp_path / "text"),
            "--out",
            str(tmp_path / "o"),
            "--vocab-size",
            "300",
        ],
        env=subprocess_env(),
        stderr=follower,
        stdout=subprocess.DEVNULL,
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert process.wait(timeout=120) == 0
    shown = b"".join(chunks).decode(errors="replace")
    # tqdm redraws one line with carriage returns and draws a bar between pipes.
    assert "encoding" in shown and "\r" in shown and "100%|" in shown, shown
