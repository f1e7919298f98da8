"""Bad inputs: every mistake a user can make gets one line naming the fix, a non-zero exit, and
changes nothing on disk.

A case is a :class:`BadInput`:

- ``make(scene)`` builds what the case needs under the scene's temporary directory and returns
  either an argv for ``hyperp.cli.main`` or a zero-argument callable (the Python API);
- ``message``: a regex that the one-line error must match (``re.search``);
- ``exit_code``: what ``hyperp`` exits with; for a callable, the status the CLI gives the
  exception it raises (2 for the user-error types, 1 for anything else);
- ``keep``: paths (relative to the scene) that must exist before the call and stay unchanged;
- ``may_create``: paths that may appear, for records a command keeps even when it refuses (the
  verification record of llm.c shards that were read in full, so a retry does not read them again).

Beyond ``keep``, the whole scene (every file's bytes, mode and mtime; every directory) is hashed
before and after: a failing command may neither change nor remove anything, nor create anything
outside ``may_create``. To add a verb, add cases to ``CASES`` (``Scene`` offers a text directory,
a finished preparation, and arbitrary files).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import pickle
import random
import re
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from hyperp.cli import UserError
from hyperp.data import open_corpus, prepare, write_llmc_shard

pytestmark = pytest.mark.filterwarnings("ignore:the validation split has only:UserWarning")

WORDS = [
    "a",
    "tale",
    "of",
    "two",
    "cities",
    "it",
    "was",
    "the",
    "best",
    "of",
    "times",
    "worst",
    "age",
    "wisdom",
    "foolishness",
]
USER_ERRORS = (UserError, ValueError, FileNotFoundError)


@dataclass(frozen=True)
class BadInput:
    id: str
    make: Callable[[Scene], list[str] | Callable[[], object]]
    message: str
    exit_code: int = 2
    keep: tuple[str, ...] = ()
    may_create: tuple[str, ...] = ()


class Scene:
    """A temporary directory with ready-made ingredients for a case."""

    def __init__(self, root: Path, reference: Path):
        self.root = root
        self.reference = reference  # a finished preparation, shared by all cases

    def path(self, name: str) -> Path:
        return self.root / name

    def texts(self, name: str = "text", count: int = 6) -> Path:
        directory = self.root / name
        directory.mkdir(parents=True, exist_ok=True)
        rng = random.Random(count)
        for index in range(count):
            text = " ".join(rng.choice(WORDS) for _ in range(80))
            (directory / f"d{index}.txt").write_text(text)
        return directory

    def prepared(self, name: str = "out") -> Path:
        target = self.root / name
        shutil.copytree(self.reference, target)
        return target

    def file(self, name: str, data: bytes | str) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, str):
            path.write_text(data)
        else:
            path.write_bytes(data)
        return path

    def edit_meta(self, directory: Path, change: Callable[[dict], object]) -> Path:
        meta = json.loads((directory / "meta.json").read_text())
        change(meta)
        (directory / "meta.json").write_text(json.dumps(meta))
        return directory

    def read_only(self, path: Path) -> Path:
        path.chmod(0o555)
        return path


def tree_state(root: Path) -> dict[str, tuple]:
    """Every entry under ``root``: kind and mode, and for files size, mtime and content hash."""
    state = {}
    for directory, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(directory) / name
            info = path.lstat()
            key = path.relative_to(root).as_posix()
            if stat.S_ISREG(info.st_mode):
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                state[key] = ("file", info.st_mode, info.st_size, info.st_mtime_ns, digest)
            else:
                state[key] = ("other", info.st_mode)
    return state


class _Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def pickle_payload(marker: Path) -> bytes:
    """A pickle that creates ``marker`` when loaded: proof that a reader ran code from a file."""
    return pickle.dumps(_Payload(str(marker)))


def pickle_bomb(scene: Scene) -> bytes:
    """A pickle that creates ``ran`` in the scene when loaded: the tree check would see it."""
    return pickle_payload(scene.path("ran"))


def _prepare(scene: Scene, *args: str, out: str = "out") -> list[str]:
    return ["prepare", *args, "--out", str(scene.path(out)), "--vocab-size", "300", "--quiet"]


def _llmc(scene: Scene, name: str, tokens, **header) -> Path:
    path = scene.path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    if header:
        raw = np.zeros(256, dtype="<i4")
        raw[0], raw[1], raw[2] = (
            header.get("magic", 20240520),
            header.get("version", 1),
            len(tokens),
        )
        raw[2] = header.get("count", raw[2])
        path.write_bytes(raw.tobytes() + np.asarray(tokens, dtype="<u2").tobytes())
    else:
        write_llmc_shard(path, np.asarray(tokens))
    return path


def then(*steps):
    """Build a scene in steps (evaluated left to right); the last step is what the case runs."""
    return steps[-1]


def api(function: Callable, *args, **kwargs) -> Callable[[], object]:
    """A Python API call whose arguments (and so the scene) are built now, run later."""
    return lambda: function(*args, **kwargs)


def _first_shard(meta: dict) -> dict:
    return meta["splits"]["train"]["shards"][0]


def _flip_keeping_mtime(path: Path) -> None:
    info = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))


def _verified_then_changed(scene: Scene) -> Callable[[], object]:
    out = scene.prepared()
    open_corpus(out)  # records the verification
    _flip_keeping_mtime(out / "train_000000.bin")
    return lambda: open_corpus(out)


CASES = [
    # ---- hyperp prepare: inputs
    BadInput(
        "prepare-missing-input",
        lambda s: _prepare(s, str(s.path("nope.txt"))),
        r"input '.*nope\.txt' does not exist",
    ),
    BadInput(
        "prepare-glob-matches-nothing",
        lambda s: _prepare(s, str(s.path("*.md"))),
        r"no files match the pattern",
    ),
    BadInput(
        "prepare-empty-input-keeps-old",
        lambda s: then(s.prepared(), _prepare(s, str(s.file("empty.txt", "")))),
        r"no text found in the inputs",
        keep=("out/meta.json", "out/train_000000.bin"),
    ),
    BadInput(
        "prepare-only-binary",
        lambda s: then(s.prepared(), _prepare(s, str(s.file("ls.txt", b"\x7fELF\x00\x01" * 500)))),
        r"every input file looks binary \(1 skipped.*ls\.txt",
        keep=("out/meta.json",),
    ),
    BadInput(
        "prepare-special-file",
        lambda s: _prepare(s, os.devnull),
        r"/dev/null is not a regular file",
    ),
    BadInput(
        "prepare-bad-gzip",
        lambda s: _prepare(s, str(s.file("a.txt.gz", b"plain bytes, not gzip"))),
        r"a\.txt\.gz is not a readable gzip file",
    ),
    BadInput(
        "prepare-truncated-gzip",
        lambda s: _prepare(s, str(s.file("b.txt.gz", gzip.compress(b"word " * 5000)[:-30]))),
        r"b\.txt\.gz is not a readable gzip file",
    ),
    BadInput(
        "prepare-jsonl-not-json",
        lambda s: _prepare(s, str(s.file("a.jsonl", '{"text": "ok"}\n{oops\n'))),
        r"a\.jsonl:2: not valid JSON",
    ),
    BadInput(
        "prepare-jsonl-missing-field",
        lambda s: _prepare(s, str(s.file("a.jsonl", '{"body": "x"}\n'))),
        r"no field 'text' \(fields: body\); choose the text field with --jsonl-field",
    ),
    BadInput(
        "prepare-jsonl-field-not-text",
        lambda s: _prepare(s, str(s.file("a.jsonl", '{"text": 5}\n'))),
        r"field 'text' holds int, not text",
    ),
    BadInput(
        "prepare-jsonl-gz-not-object",
        lambda s: _prepare(s, str(s.file("a.jsonl.gz", gzip.compress(b"[1, 2]\n")))),
        r"a\.jsonl\.gz:1: expected a JSON object per line",
    ),
    BadInput(
        "prepare-parquet-garbage",
        lambda s: _prepare(s, str(s.file("t.parquet", b"PAR1 but not really"))),
        r"t\.parquet: not a readable Parquet file",
    ),
    # ---- hyperp prepare: tokenizer
    BadInput(
        "prepare-tokenizer-missing",
        lambda s: _prepare(s, str(s.texts()), "--tokenizer", str(s.path("tok.json"))),
        r"tokenizer file .*tok\.json does not exist",
    ),
    BadInput(
        "prepare-tokenizer-is-a-directory",
        lambda s: _prepare(s, str(s.texts()), "--tokenizer", str(s.texts("dir"))),
        r"tokenizer file .*dir is not a file",
    ),
    BadInput(
        "prepare-tokenizer-not-json-keeps-old",
        lambda s: then(
            s.prepared(),
            _prepare(s, str(s.texts()), "--tokenizer", str(s.file("t.json", "{oops"))),
        ),
        r"t\.json is not a Hugging Face tokenizer\.json file",
        keep=("out/meta.json", "out/tokenizer.json"),
    ),
    BadInput(
        "prepare-tokenizer-wrong-json",
        lambda s: _prepare(s, str(s.texts()), "--tokenizer", str(s.file("t.json", '{"a": 1}'))),
        r"t\.json is not a Hugging Face tokenizer\.json file",
    ),
    BadInput(
        "prepare-tokenizer-pickle",
        lambda s: _prepare(s, str(s.texts()), "--tokenizer", str(s.file("t.json", pickle_bomb(s)))),
        r"t\.json is not a Hugging Face tokenizer\.json file",
    ),
    BadInput(
        "prepare-own-tokenizer-broken-keeps-old",
        lambda s: then(
            (s.prepared() / "tokenizer.json").write_text("{"),
            _prepare(s, str(s.texts()), "--tokenizer", str(s.path("out/tokenizer.json"))),
        ),
        r"out/tokenizer\.json is not a Hugging Face tokenizer\.json file",
        keep=("out/meta.json", "out/train_000000.bin"),
    ),
    # ---- hyperp prepare: options
    BadInput(
        "prepare-vocab-too-small",
        lambda s: [*_prepare(s, str(s.texts())), "--vocab-size", "100"],
        r"vocab size 100 is too small.*--vocab-size 257",
    ),
    BadInput(
        "prepare-vocab-not-a-number",
        lambda s: [*_prepare(s, str(s.texts())), "--vocab-size", "lots"],
        r"argument --vocab-size: invalid int value: 'lots'",
    ),
    BadInput(
        "prepare-val-fraction-too-large",
        lambda s: [*_prepare(s, str(s.texts())), "--val-fraction", "1.5"],
        r"--val-fraction must be in \[0, 1\), not 1\.5",
    ),
    BadInput(
        "prepare-val-fraction-negative",
        lambda s: [*_prepare(s, str(s.texts())), "--val-fraction", "-0.1"],
        r"--val-fraction must be in \[0, 1\), not -0\.1",
    ),
    BadInput(
        "prepare-val-fraction-nan",
        lambda s: [*_prepare(s, str(s.texts())), "--val-fraction", "nan"],
        r"--val-fraction must be in \[0, 1\), not nan",
    ),
    BadInput(
        "prepare-shard-tokens-zero",
        lambda s: [*_prepare(s, str(s.texts())), "--shard-tokens", "0"],
        r"--shard-tokens must be a positive integer, not 0",
    ),
    BadInput(
        "prepare-seed-negative",
        lambda s: [*_prepare(s, str(s.texts())), "--seed", "-1"],
        r"--seed must be a non-negative integer, not -1",
    ),
    BadInput(
        "prepare-no-inputs",
        lambda s: ["prepare", "--out", str(s.path("out"))],
        r"give at least one INPUT or --hf-dataset",
    ),
    # ---- hyperp prepare: the output directory
    BadInput(
        "prepare-out-is-a-file",
        lambda s: then(s.file("out", "mine"), _prepare(s, str(s.texts()))),
        r"output .*out exists and is not a directory; choose another --out",
        keep=("out",),
    ),
    BadInput(
        "prepare-out-holds-foreign-files",
        lambda s: then(s.file("out/notes.md", "mine"), _prepare(s, str(s.texts()))),
        r"holds files that prepare did not write \(notes\.md\); choose an empty or new --out",
        keep=("out/notes.md",),
    ),
    BadInput(
        "prepare-out-is-the-input",
        lambda s: _prepare(s, str(s.texts("out")), out="out"),
        r"holds files that prepare did not write \(d0\.txt",
        keep=("out/d0.txt",),
    ),
    BadInput(
        "prepare-out-read-only-keeps-old",
        lambda s: then(s.read_only(s.prepared()), _prepare(s, str(s.texts()))),
        r"output directory .*out is read-only; make it writable \(chmod u\+w\) or choose another",
        keep=("out/meta.json",),
    ),
    BadInput(
        "prepare-out-in-read-only-directory",
        lambda s: then(s.read_only(s.texts("locked")), _prepare(s, str(s.texts()), out="locked/o")),
        r"cannot create .*locked/o: .*locked is read-only; choose an --out in a writable",
    ),
    # ---- open_corpus: prepared directories
    BadInput(
        "open-missing-path",
        lambda s: api(open_corpus, s.path("nowhere")),
        r"data directory .*nowhere does not exist; create it with `hyperp prepare",
    ),
    BadInput(
        "open-empty-directory",
        lambda s: api(open_corpus, s.texts("empty", count=0)),
        r"holds no token shards",
    ),
    BadInput(
        "open-meta-not-json",
        lambda s: api(open_corpus, s.file("c/meta.json", "{oops").parent),
        r"meta\.json is not valid JSON",
    ),
    BadInput(
        "open-meta-pickle",
        lambda s: api(open_corpus, s.file("c/meta.json", pickle_bomb(s)).parent),
        r"meta\.json is not valid JSON",
    ),
    BadInput(
        "open-meta-a-list",
        lambda s: api(open_corpus, s.file("c/meta.json", "[1, 2]").parent),
        r"meta\.json is malformed \(expected a JSON object",
    ),
    BadInput(
        "open-meta-deeply-nested",
        lambda s: api(open_corpus, s.file("c/meta.json", "[" * 100_000 + "]" * 100_000).parent),
        r"meta\.json is not valid JSON \(RecursionError\)",
    ),
    BadInput(
        "open-meta-split-not-an-object",
        lambda s: api(open_corpus, s.edit_meta(s.prepared(), lambda m: m["splits"].update(val=[]))),
        r"meta\.json is malformed \(splits\.val\.shards is not a list",
    ),
    BadInput(
        "open-meta-shard-outside",
        lambda s: api(
            open_corpus,
            s.edit_meta(s.prepared(), lambda m: _first_shard(m).update(file="../../x.bin")),
        ),
        r"meta\.json is malformed \(shard file '\.\./\.\./x\.bin' is not a plain file name",
    ),
    BadInput(
        "open-meta-negative-tokens",
        lambda s: api(
            open_corpus, s.edit_meta(s.prepared(), lambda m: _first_shard(m).update(tokens=-5))
        ),
        r"meta\.json is malformed \(.*tokens.*-5",
    ),
    BadInput(
        "open-meta-vocab-a-string",
        lambda s: api(open_corpus, s.edit_meta(s.prepared(), lambda m: m.update(vocab_size="8"))),
        r"meta\.json is malformed \(vocab_size",
    ),
    BadInput(
        "open-meta-eot-out-of-range",
        lambda s: api(open_corpus, s.edit_meta(s.prepared(), lambda m: m.update(eot_id=10**6))),
        r"meta\.json is malformed \(eot_id",
    ),
    BadInput(
        "open-meta-unknown-dtype",
        lambda s: api(open_corpus, s.edit_meta(s.prepared(), lambda m: m.update(dtype="f4"))),
        r"unknown dtype 'f4'",
    ),
    BadInput(
        "open-meta-future-version",
        lambda s: api(open_corpus, s.edit_meta(s.prepared(), lambda m: m.update(format_version=9))),
        r"format_version 9, this hyperp reads 1",
    ),
    BadInput(
        "open-shard-missing",
        lambda s: api(
            open_corpus, then(out := s.prepared(), (out / "val_000000.bin").unlink(), out)
        ),
        r"val_000000\.bin listed in meta\.json is missing",
    ),
    BadInput(
        "open-shard-truncated",
        lambda s: api(
            open_corpus,
            then(out := s.prepared(), (out / "train_000000.bin").write_bytes(b"\x00\x01"), out),
        ),
        r"train_000000\.bin is truncated or corrupt",
    ),
    BadInput(
        "open-shard-changed-after-verification",
        _verified_then_changed,
        r"train_000000\.bin is corrupt: sha256",
    ),
    BadInput(
        "open-interrupted-prepare",
        lambda s: api(open_corpus, s.file("c/train_000000.bin", b"\x00" * 2000).parent),
        r"looks like an interrupted `hyperp prepare`",
    ),
    BadInput(
        "open-prepared-vocab-too-small",
        lambda s: api(open_corpus, s.prepared(), vocab_size=100),
        r"--model\.vocab_size 100 is smaller than",
    ),
    BadInput(
        "open-verify-unknown",
        lambda s: api(open_corpus, s.prepared(), verify="sometimes"),
        r"verify must be 'once', 'always' or 'never'",
    ),
    BadInput(
        "open-bad-tokenizer",
        lambda s: api(
            then(
                out := s.prepared(),
                (out / "tokenizer.json").write_bytes(pickle_bomb(s)),
                open_corpus(out).load_tokenizer,  # the open succeeds; loading the tokenizer fails
            )
        ),
        r"tokenizer\.json is not a Hugging Face tokenizer\.json file",
    ),
    # ---- open_corpus: llm.c shards
    BadInput(
        "open-llmc-glob-matches-nothing",
        lambda s: api(open_corpus, str(s.path("*.bin"))),
        r"no files match",
    ),
    BadInput(
        "open-llmc-bad-magic",
        lambda s: api(open_corpus, _llmc(s, "x.bin", [1, 2], magic=7)),
        r"x\.bin is not an llm\.c token shard: magic 7",
    ),
    BadInput(
        "open-llmc-bad-version",
        lambda s: api(open_corpus, _llmc(s, "x.bin", [1, 2], version=3)),
        r"version 3; only version 1",
    ),
    BadInput(
        "open-llmc-truncated",
        lambda s: api(open_corpus, _llmc(s, "x.bin", [1, 2], count=99)),
        r"x\.bin is truncated",
    ),
    BadInput(
        "open-llmc-ids-beyond-gpt2",
        lambda s: api(open_corpus, _llmc(s, "d/x_train.bin", [1, 60_000]).parent),
        r"ids up to 60000, beyond .*50257.*--model\.vocab_size 60001",
        may_create=("d/.verified.json",),
    ),
    BadInput(
        "open-llmc-vocab-below-largest-id",
        lambda s: api(open_corpus, _llmc(s, "x.bin", [1, 900]), vocab_size=512),
        r"--model\.vocab_size 512 is smaller than .*901",
        may_create=(".verified.json",),
    ),
    BadInput(
        "open-vocab-not-an-integer",
        lambda s: api(open_corpus, _llmc(s, "x.bin", [1, 2]), vocab_size=True),
        r"vocab_size must be a positive integer",
    ),
]


# -- train, check, sweep and the Python API -------------------------------------------------------

TINY = [
    "--model.depth=2", "--model.width=32", "--model.head_dim=16", "--model.n_kv_heads=2",
    "--model.context=32", "--train.batch_size=4", "--train.seq_len=32", "--train.steps=2",
    "--train.progress=false",
]  # fmt: skip


def _train(scene: Scene, *args: str, out: str = "run") -> list[str]:
    data = f"--data.path={scene.reference}"
    return ["train", "--out", str(scene.path(out)), *TINY, data, *args]


def _config_file(scene: Scene, text: str) -> list[str]:
    return ["train", "--config", str(scene.file("run.toml", text)), "--out", str(scene.path("r"))]


def _old_run(scene: Scene) -> Path:
    """A run directory (config and metrics) trained with model.width 48."""
    from hyperp.train import load_config

    overrides = [*TINY, "--model.width=48", f"--data.path={scene.reference}"]
    config = load_config("tiny", overrides).resolve(open_corpus(scene.reference).vocab_size)
    run = scene.path("run")
    run.mkdir()
    (run / "config.json").write_text(json.dumps({**config.to_dict(), "plan": {}}))
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 5.0}\n')
    return run


def _run_on_corpus_naming(scene: Scene, tokenizer: str) -> Callable[[], object]:
    """``tokenizer_path`` of a run without its own tokenizer.json, trained on a corpus whose
    meta.json names ``tokenizer`` (beside it: a tokenizer the reader must not take)."""
    from hyperp.serve.run import tokenizer_path
    from hyperp.train import load_config

    corpus = scene.prepared("corpus")
    shutil.copyfile(corpus / "tokenizer.json", scene.path("tokenizer.json"))
    scene.edit_meta(corpus, lambda meta: meta.update(tokenizer=tokenizer))
    overrides = [*TINY, f"--data.path={corpus}"]
    config = load_config("tiny", overrides).resolve(300)
    run = scene.path("run")
    run.mkdir()
    (run / "config.json").write_text(json.dumps({**config.to_dict(), "plan": {}}))
    return lambda: tokenizer_path(run)


def _sweep_file(scene: Scene, text: str) -> list[str]:
    return ["sweep", str(scene.file("grid.toml", text)), "--dry-run"]


def _fit(scene: Scene, table: str | bytes) -> list[str]:
    return ["fit", str(scene.file("results.csv", table))]


def _reproduce(scene: Scene, *args: str) -> list[str]:
    return ["reproduce", "--smoke", "--out", str(scene.path("reproduce")), *args]


def _model(**overrides):
    from hyperp.model import ModelConfig, Transformer

    values = dict(depth=2, width=32, head_dim=16, n_kv_heads=2, context=16) | overrides
    return Transformer(ModelConfig(**values))


def _zero_matrix():
    import torch

    from hyperp.optim import MuonH

    return MuonH([torch.nn.Parameter(torch.zeros(4, 4))])


def _optimizer(method: str):
    from hyperp.optim import build_optimizer

    return build_optimizer(_model(vocab_size=64), method)


def _resolve_small_vocab():
    from hyperp.train import load_config

    return load_config("tiny", {"model.vocab_size": 100}).resolve(8192)


def _newton_schulz_vector():
    import torch

    from hyperp.optim import newton_schulz

    return newton_schulz(torch.ones(5))


MORE_CASES = [
    BadInput("train-unknown-preset", lambda s: ["train", "--config", "tinyy"], r"preset name"),
    BadInput("train-typo-key", lambda s: _train(s, "--train.stesp=3"), r"did you mean train.steps"),
    BadInput("train-text-for-int", lambda s: _train(s, "--model.depth=deep"), r"not a valid int"),
    BadInput("train-unknown-section", lambda s: _train(s, "--trian.steps=3"), r"SECTION one of"),
    BadInput(
        "train-toml-text-for-int",
        lambda s: _config_file(s, '[train]\nsteps = "30"\n'),
        r"train.steps must be an integer, got '30' \(str\)",
    ),
    BadInput(
        "train-toml-text-for-bool",
        lambda s: _config_file(s, '[train]\nprogress = "false"\n'),
        r"train.progress must be true or false, got 'false' \(str\)",
    ),
    BadInput(
        "train-toml-float-for-int",
        lambda s: _config_file(s, "[train]\nsteps = 2.5\n"),
        r"train.steps must be an integer, got 2.5",
    ),
    BadInput(
        "train-toml-bool-for-int",
        lambda s: _config_file(s, "[model]\ndepth = true\n"),
        r"model.depth must be an integer, got True",
    ),
    BadInput(
        "train-toml-string-for-bool",
        lambda s: _config_file(s, '[train]\ncompile = "maybe"\n'),
        r"train.compile must be true or false, got 'maybe' \(str\)",
    ),
    BadInput("train-toml-syntax", lambda s: _config_file(s, "[train\n"), r"not valid TOML"),
    BadInput(
        "train-toml-unknown-section",
        lambda s: _config_file(s, "[trainer]\nsteps = 3\n"),
        r"unknown config sections \['trainer'\]",
    ),
    BadInput("train-negative-stop-after", lambda s: _train(s, "--stop-after", "-3"), r"at least 1"),
    BadInput(
        "train-missing-data",
        lambda s: ["train", "--out", str(s.path("run")), "--data.path", str(s.path("nowhere"))],
        r"does not exist; create it with `hyperp prepare",
    ),
    BadInput(
        "train-vocab-smaller-than-data",
        lambda s: _train(s, "--model.vocab_size=100"),
        r"--model.vocab_size 100 is smaller than the vocabulary of .* use --model.vocab_size 300",
    ),
    BadInput(
        "train-batch-not-divisible",
        lambda s: _train(s, "--train.batch_size=5", "--train.grad_accum=2"),
        r"must be a multiple of processes x grad_accum",
    ),
    BadInput(
        "train-seq-longer-than-context",
        lambda s: _train(s, "--train.seq_len=64"),
        r"exceeds model.context",
    ),
    BadInput("train-unknown-method", lambda s: _train(s, "--optim.method=sgd"), r"optim.method"),
    BadInput(
        "train-negative-lr", lambda s: _train(s, "--optim.lr=-1"), r"optim.lr must be positive"
    ),
    BadInput(
        "train-resume-must-without-checkpoint",
        lambda s: _train(s, "--resume", "must"),
        r"no checkpoint to resume",
    ),
    BadInput(
        "train-changed-config",
        lambda s: then(_old_run(s), _train(s)),
        r"holds a run with a different config \(model.width: 48 -> 32",
        keep=("run/config.json", "run/metrics.jsonl"),
    ),
    BadInput(
        "train-resume-never-on-a-run",
        lambda s: then(_old_run(s), _train(s, "--model.width=48", "--resume", "never")),
        r"already holds a run; pass --resume auto",
        keep=("run/config.json",),
    ),
    BadInput(
        "train-heads-not-multiple",
        lambda s: _train(s, "--model.n_heads=3"),
        r"multiple of model.n_kv_heads",
    ),
    BadInput("check-one-width", lambda s: ["check", "--widths", "16"], r"at least two widths"),
    BadInput(
        "check-reserved-model-key",
        lambda s: ["check", "--model.depth", "3"],
        r"set it with the check's own --depths",
    ),
    BadInput(
        "check-text-for-int",
        lambda s: ["check", "--widths", "16", "32", "--model.n_heads", "four"],
        r"--model.n_heads 'four' is not a valid int",
    ),
    BadInput(
        "check-old-syntax",
        lambda s: ["check", "--model", "n_heads=4"],
        r"overrides look like --SECTION.KEY VALUE",
    ),
    BadInput("check-zero-width", lambda s: ["check", "--widths", "0", "16"], r"positive"),
    BadInput(
        "api-tokenizer-outside-its-corpus",
        lambda s: _run_on_corpus_naming(s, "../tokenizer.json"),
        r"corpus/meta.json is malformed \(tokenizer '\.\./tokenizer\.json' is not a plain file",
    ),
    BadInput(
        "sweep-missing-file",
        lambda s: ["sweep", str(s.path("nothing.toml")), "--dry-run"],
        r"nothing.toml",
    ),
    BadInput(
        "sweep-unknown-top-level-key",
        lambda s: _sweep_file(s, 'base = "tiny"\nworkres = 2\n[axes]\n"optim.lr" = [0.01]\n'),
        r"workres",
    ),
    BadInput(
        "sweep-unknown-axis-key",
        lambda s: _sweep_file(s, 'base = "tiny"\n[axes]\n"optim.lrr" = [0.01, 0.02]\n'),
        r"grid.toml: unknown config key optim.lrr; did you mean optim.lr",
    ),
    BadInput(
        "sweep-bad-launcher",
        lambda s: _sweep_file(
            s, 'base = "tiny"\n[launcher]\nkind = "pbs"\n[axes]\n"optim.lr" = [0.01]\n'
        ),
        r"\[launcher\] kind must be one of local, slurm",
    ),
    BadInput(
        "sweep-newline-in-partition",
        lambda s: _sweep_file(
            s,
            'base = "tiny"\n[launcher]\nkind = "slurm"\npartition = "gpu\\ntouch /tmp/x"\n'
            '[axes]\n"optim.lr" = [0.01]\n',
        ),
        r"grid.toml: \[launcher\] partition holds a line break or NUL character .*one line",
    ),
    BadInput(
        "sweep-newline-in-sbatch-extra",
        lambda s: _sweep_file(
            s,
            'base = "tiny"\n[launcher]\nsbatch = ["--exclusive", "--comment=a\\rb"]\n'
            '[axes]\n"optim.lr" = [0.01]\n',
        ),
        r"\[launcher\] sbatch holds a line break or NUL character \('--comment=a\\rb'\)",
    ),
    BadInput(
        "sweep-nul-in-setup",
        lambda s: _sweep_file(
            s,
            'base = "tiny"\n[launcher]\nsetup = ["module load x\\u0000y"]\n'
            '[axes]\n"optim.lr" = [0.01]\n',
        ),
        r"\[launcher\] setup holds a line break or NUL character",
    ),
    BadInput(
        "sweep-text-for-int-axis",
        lambda s: _sweep_file(s, 'base = "tiny"\n[axes]\n"train.steps" = [10, "many"]\n'),
        r"grid.toml: train.steps must be an integer, got 'many' \(str\)",
    ),
    BadInput(
        "sweep-toml-string-for-int-axis",
        lambda s: _sweep_file(s, 'base = "tiny"\n[axes]\n"train.steps" = ["30"]\n'),
        r"grid.toml: train.steps must be an integer, got '30' \(str\)",
    ),
    BadInput(
        "sweep-toml-string-for-float-setting",
        lambda s: _sweep_file(
            s, 'base = "tiny"\n[set]\n"optim.lr" = "0.01"\n[axes]\n"train.seed" = [1]\n'
        ),
        r"grid.toml: optim.lr must be a number or none, got '0.01' \(str\)",
    ),
    BadInput(
        "fit-two-learning-rates",
        lambda s: _fit(s, "lr,val_loss\n0.01,3.0\n0.02,2.9\n"),
        r"nothing could be fitted: an LR optimum needs at least 3 distinct learning rates.*add "
        r"sweep points",
    ),
    BadInput(
        "fit-text-for-loss",
        lambda s: _fit(s, "lr,val_loss\n0.01,3.0\n0.02,abc\n0.04,2.9\n"),
        r"results.csv: val_loss 'abc' is not a number; fix the value",
    ),
    BadInput(
        "fit-row-longer-than-header",
        lambda s: _fit(s, "lr,val_loss\n0.01,3,1\n0.02,2.9\n0.04,2.95\n"),
        r"results.csv:2 has more fields than the header",
    ),
    BadInput(
        "fit-no-loss-column",
        lambda s: _fit(s, "lr,los\n0.01,3\n0.02,2.9\n0.04,2.95\n"),
        r"no record has a val_loss or loss column; name the loss column with --y",
    ),
    BadInput(
        "fit-binary-table",
        lambda s: _fit(s, bytes(range(256)) * 4),
        r"results.csv is not a text file",
    ),
    BadInput(
        "fit-broken-json",
        lambda s: ["fit", str(s.file("results.json", '[{"lr": 0.1,'))],
        r"results.json is not valid JSON",
    ),
    BadInput(
        "fit-directory-without-runs",
        lambda s: ["fit", str(s.texts())],
        r"holds no run directories",
    ),
    BadInput(
        "fit-unknown-file-type",
        lambda s: ["fit", str(s.file("results.xlsx", "lr\n"))],
        r"unknown file type '.xlsx'; give a run directory, a sweep directory, or a .csv",
    ),
    BadInput(
        "reproduce-unknown-key",
        lambda s: _reproduce(s, "--set", "optim.lrr=1"),
        r"--set: unknown config key optim.lrr; did you mean optim.lr",
    ),
    BadInput(
        "reproduce-text-for-int",
        lambda s: _reproduce(s, "--set", "train.steps=abc"),
        r"--train.steps 'abc' is not a valid int",
    ),
    BadInput(
        "reproduce-set-without-value",
        lambda s: _reproduce(s, "--set", "steps"),
        r"write --set SECTION.KEY=VALUE",
    ),
    BadInput(
        "reproduce-unknown-study",
        lambda s: _reproduce(s, "--only", "widht"),
        r"unknown study 'widht'; choose from .*width",
    ),
    BadInput(
        "reproduce-missing-data",
        lambda s: _reproduce(s, "--set", f"data.path={s.path('nothing')}"),
        r"nothing does not exist; create it with `hyperp prepare",
    ),
    BadInput(
        "reproduce-no-workers",
        lambda s: _reproduce(s, "--workers", "0"),
        r"workers and threads per worker must be at least 1",
    ),
    BadInput(
        "api-model-without-vocabulary",
        lambda s: lambda: _model(),
        r"model.vocab_size is not set",
        exit_code=2,
    ),
    BadInput("api-zero-matrix", lambda s: _zero_matrix, r"no sphere to stay on"),
    BadInput("api-unknown-method", lambda s: lambda: _optimizer("sgd"), r"unknown method 'sgd'"),
    BadInput("api-vocab-below-data", lambda s: _resolve_small_vocab, r"smaller than the data's"),
    BadInput(
        "api-newton-schulz-vector", lambda s: _newton_schulz_vector, r"needs a matrix", exit_code=2
    ),
    BadInput(
        "api-load-run-missing",
        lambda s: api(__import__("hyperp").load_run, s.path("no-run")),
        r"does not exist",
    ),
    BadInput(
        "api-srun-without-procid",
        lambda s: api(
            __import__("hyperp.train.distributed", fromlist=["x"]).launch_environment,
            {"SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "2", "SLURM_LOCALID": "0"},
        ),
        r"SLURM_PROCID is not set",
    ),
]
CASES = CASES + MORE_CASES


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("reference")
    scene = Scene(root, root)
    return prepare([scene.texts(count=8)], root / "prepared", vocab_size=300, shard_tokens=400)


def run_case(case: BadInput, scene: Scene, capsys) -> None:
    """Build the case, run it, and check message, exit status and the files on disk."""
    import hyperp.cli as cli

    action = case.make(scene)
    for name in case.keep:
        assert scene.path(name).exists(), f"{case.id}: {name} should exist before the call"
    before = tree_state(scene.root)
    capsys.readouterr()
    if callable(action):
        try:
            action()
        except Exception as error:
            code = 2 if isinstance(error, USER_ERRORS) else 1
            message = str(error)
        else:
            raise AssertionError(f"{case.id}: no error raised")
    else:
        try:
            code = cli.main(action)
        except SystemExit as exit_:  # argparse's own errors
            code = exit_.code
        stderr = capsys.readouterr().err
        assert "Traceback" not in stderr, stderr
        errors = [line for line in stderr.splitlines() if ": error: " in line]
        assert len(errors) == 1, stderr
        message = errors[0]
        assert re.match(r"hyperp [a-z]+( [a-z]+)?: error: ", message) or "usage:" in stderr, stderr
    assert "\n" not in message.strip(), message
    assert re.search(case.message, message), f"{case.id}: {message!r}"
    assert code == case.exit_code, (case.id, code, message)
    after = tree_state(scene.root)
    for name in case.may_create:
        if name not in before:
            after.pop(name, None)
    assert after == before, f"{case.id}: files on disk changed"
    assert not scene.path("ran").exists()


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input(case, reference, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HYPERP_CACHE", str(tmp_path / "scene" / "cache"))
    scene = Scene(tmp_path / "scene", reference)
    scene.root.mkdir()
    try:
        run_case(case, scene, capsys)
    finally:
        for directory, _, _ in os.walk(scene.root):
            os.chmod(directory, 0o755)


def test_the_table_is_large_and_names_are_unique():
    assert len(CASES) >= 40 and len({case.id for case in CASES}) == len(CASES)
    verbs = {case.id.split("-")[0] for case in CASES}
    assert {"prepare", "train", "check", "sweep", "fit", "reproduce", "api"} <= verbs
