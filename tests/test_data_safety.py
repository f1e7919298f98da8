"""The data layer's safety: files from elsewhere run no code, and a failing or interrupted
`hyperp prepare` never costs the preparation that was there before."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hyperp.data import open_corpus, prepare
from support import subprocess_env
from test_bad_inputs import pickle_payload, tree_state
from test_data_prepare import write_docs

pytestmark = pytest.mark.filterwarnings("ignore:the validation split has only:UserWarning")

HYPERP = [sys.executable, "-m", "hyperp"]


def _write_docs(directory: Path, count: int, words: int = 150, seed: int = 0) -> Path:
    write_docs(directory, count, words, seed)
    return directory


def _hostile(marker: Path) -> bytes:
    data = pickle_payload(marker)
    assert not marker.exists()
    return data


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("safety")
    return prepare([_write_docs(root / "text", 8)], root / "out", vocab_size=300, shard_tokens=500)


def _copy(source: Path, target: Path) -> Path:
    target.mkdir(parents=True)
    for entry in source.iterdir():
        if entry.is_file():
            (target / entry.name).write_bytes(entry.read_bytes())
    return target


# -- files from elsewhere never run code ------------------------------------------------------


def test_hostile_meta_json_is_a_clear_error_and_runs_nothing(prepared, tmp_path):
    marker = tmp_path / "ran"
    copy = _copy(prepared, tmp_path / "c")
    (copy / "meta.json").write_bytes(_hostile(marker))
    with pytest.raises(ValueError, match=r"meta\.json is not valid JSON.*hyperp prepare") as error:
        open_corpus(copy)
    assert "\n" not in str(error.value) and not marker.exists()


def test_hostile_tokenizer_is_a_clear_error_and_runs_nothing(prepared, tmp_path):
    marker = tmp_path / "ran"
    copy = _copy(prepared, tmp_path / "c")
    (copy / "tokenizer.json").write_bytes(_hostile(marker))
    corpus = open_corpus(copy)
    with pytest.raises(ValueError, match=r"tokenizer\.json is not a Hugging Face tokenizer"):
        corpus.load_tokenizer()
    with pytest.raises(ValueError, match=r"tokenizer\.json is not a Hugging Face tokenizer"):
        prepare([tmp_path / "c"], tmp_path / "out", tokenizer=copy / "tokenizer.json")
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_hostile_stamp_and_shard_run_nothing(prepared, tmp_path):
    marker = tmp_path / "ran"
    copy = _copy(prepared, tmp_path / "c")
    # A planted verification record is ignored: the shards are verified from scratch.
    (copy / ".verified.json").write_bytes(_hostile(marker))
    assert len(open_corpus(copy).train) > 0
    shard = tmp_path / "fineweb_train_000000.bin"
    shard.write_bytes(_hostile(marker))
    with pytest.raises(ValueError, match="not an llm.c token shard|shorter than the"):
        open_corpus(shard)
    assert not marker.exists()


@pytest.mark.parametrize(
    "change",
    [
        lambda meta: meta["splits"]["train"]["shards"][0].update(file="../secret.bin"),
        lambda meta: meta["splits"]["train"]["shards"][0].update(file="/etc/hostname"),
        lambda meta: meta.update(tokenizer="../tokenizer.json"),
    ],
    ids=["relative", "absolute", "tokenizer"],
)
def test_meta_json_cannot_point_outside_its_directory(prepared, tmp_path, change):
    copy = _copy(prepared, tmp_path / "c")
    (tmp_path / "secret.bin").write_bytes((copy / "train_000000.bin").read_bytes())
    meta = json.loads((copy / "meta.json").read_text())
    change(meta)
    (copy / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"meta\.json is malformed.*not a plain file name"):
        open_corpus(copy)


def test_the_data_layer_has_no_code_loading_reader():
    """No unpickling reader anywhere in hyperp.data (checked on the source, every file)."""
    forbidden = re.compile(
        r"\bimport (pickle|marshal|shelve|dill)\b|\bpickle\.|torch\.load|allow_pickle\s*=\s*True"
        r"|\beval\(|\bexec\(|trust_remote_code\s*=\s*True"
    )
    sources = sorted((Path(__file__).parents[1] / "src/hyperp/data").glob("*.py"))
    assert sources
    for source in sources:
        assert not forbidden.search(source.read_text()), source


# -- a failing prepare deletes nothing ----------------------------------------------------------


def test_failing_prepare_keeps_the_earlier_preparation(prepared, tmp_path):
    out = _copy(prepared, tmp_path / "out")
    before = tree_state(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no text found"):
        prepare([tmp_path / "empty"], out, vocab_size=300)
    (tmp_path / "empty").rmdir()
    with pytest.raises(ValueError, match="vocab size 100 is too small"):
        prepare([prepared.parent / "text"], out, vocab_size=100)
    assert tree_state(tmp_path) == before
    assert open_corpus(out, verify="always").train[:].tolist() == (
        open_corpus(prepared).train[:].tolist()
    )


def test_reusing_the_outputs_own_tokenizer_replaces_it_safely(prepared, tmp_path):
    out = _copy(prepared, tmp_path / "out")
    reference = open_corpus(prepared).train[:]
    meta = json.loads((prepared / "meta.json").read_text())
    prepare(
        [prepared.parent / "text"],
        out,
        tokenizer=out / "tokenizer.json",
        val_fraction=meta["val_fraction"],
    )
    again = open_corpus(out, verify="always")
    assert np.array_equal(again.train[:], reference)
    # Nothing is left beside the output: the new preparation was swapped in whole.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_write_error_keeps_the_earlier_preparation(prepared, tmp_path):
    """A real write failure (the file-size limit, like a full disk) while shards are written."""
    import resource

    out = _copy(prepared, tmp_path / "out")
    text = _write_docs(tmp_path / "big", 40, words=2000)
    before = tree_state(out)
    limit = 4096

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    result = subprocess.run(
        [
            *HYPERP,
            "prepare",
            str(text),
            "--out",
            str(out),
            "--quiet",
            "--tokenizer",
            str(prepared / "tokenizer.json"),
        ],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        preexec_fn=limit_file_size,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert re.match(r"hyperp prepare: error: cannot write .*File too large", error), error
    assert "Traceback" not in result.stderr
    assert tree_state(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big", "out"]


# -- interruptions ------------------------------------------------------------------------------


def _interruptible() -> None:
    # A shell without job control starts background commands with SIGINT ignored, and Python
    # keeps an inherited "ignore"; the prepare under test gets Ctrl-C as a terminal would send it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start_prepare(text: Path, out: Path, tokenizer: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [
            *HYPERP,
            "prepare",
            str(text),
            "--out",
            str(out),
            "--tokenizer",
            str(tokenizer),
            "--shard-tokens",
            "20000",
        ],
        env=subprocess_env(),
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=_interruptible,
    )


def _wait_for_encoding(process: subprocess.Popen) -> list[str]:
    lines = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            break
        lines.append(line)
        if "encoding" in line:
            time.sleep(0.3)
            return lines
    raise AssertionError(f"prepare never started encoding: {''.join(lines)}")


def test_ctrl_c_and_kill_during_prepare_leave_the_old_preparation(prepared, tmp_path):
    out = _copy(prepared, tmp_path / "out")
    text = _write_docs(tmp_path / "text", 36, words=15_000, seed=1)
    for doc in text.iterdir():  # ~30M characters: encoding takes seconds even on a fast machine
        doc.write_text(doc.read_text() * 12)
    before = tree_state(out)

    process = _start_prepare(text, out, prepared / "tokenizer.json")
    _wait_for_encoding(process)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and stdout == ""
    last = stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"hyperp prepare: interrupted; .*unchanged.*", last), last
    assert tree_state(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "text"]

    # SIGKILL cannot be caught: the half-built preparation stays hidden beside the output, the
    # output itself is untouched, and the next prepare clears the leftover.
    process = _start_prepare(text, out, prepared / "tokenizer.json")
    _wait_for_encoding(process)
    process.kill()
    process.communicate(timeout=60)
    assert tree_state(out) == before
    leftovers = [p for p in tmp_path.iterdir() if p.name not in ("out", "text")]
    assert leftovers and all(p.name.startswith(".out.") for p in leftovers)
    for leftover in leftovers:
        with pytest.raises((ValueError, FileNotFoundError)):
            open_corpus(leftover)
    prepare([prepared.parent / "text"], out, tokenizer=prepared / "tokenizer.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "text"]


def test_interrupted_swap_is_undone_by_the_next_prepare(prepared, tmp_path):
    """A kill between the two renames of the swap leaves the old preparation under a hidden name;
    the next prepare puts it back before doing anything else."""
    out = tmp_path / "out"
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # its pid now belongs to no process
    retired = tmp_path / f".out.replaced-{socket.gethostname()}-{child.pid}-abc123"
    _copy(prepared, retired)
    before = tree_state(retired)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no text found"):
        prepare([tmp_path / "empty"], out, vocab_size=300)
    assert not retired.exists() and tree_state(out) == before
    assert len(open_corpus(out).train) == len(open_corpus(prepared).train)


def test_broken_pipe_ends_quietly(prepared, tmp_path):
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before hyperp prints: `hyperp prepare ... | head -c0`
    result = subprocess.run(
        [
            *HYPERP,
            "prepare",
            str(prepared.parent / "text"),
            "--out",
            str(tmp_path / "out"),
            "--vocab-size",
            "300",
        ],
        env=subprocess_env(),
        stdout=write_end,
        stderr=subprocess.PIPE,
        text=True,
        timeout=120,
    )
    os.close(write_end)
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, result.stderr
    assert result.returncode == 141
    open_corpus(tmp_path / "out", verify="always")
