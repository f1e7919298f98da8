"""Checkpoints from elsewhere: a planted or damaged checkpoint never runs code, never makes the
program read outside its step directory or hang on a FIFO, and gives one line naming the file
(``hyperp generate``, ``hyperp.load_run``, ``hyperp train``); a resume falls back to the newest
checkpoint that reads, saying which one it skipped and why."""

from __future__ import annotations

import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch.distributed.checkpoint.metadata import _MEM_FORMAT_ENCODING, TensorProperties
from torch.serialization import _get_layout

import hyperp
from hyperp.cli import main
from hyperp.train.checkpoint import CheckpointError, list_checkpoints
from hyperp.train.trainer import train
from support import subprocess_env
from test_bad_inputs import tree_state
from training import STOP_HALFWAY, config, logged

STEP4, PLANTED = "step_00000004", "step_00000099"


@pytest.fixture(scope="module")
def stopped_run(corpus, tmp_path_factory) -> Path:
    """A run stopped after step 4 of 8 (its one checkpoint: step 4)."""
    run = tmp_path_factory.mktemp("stopped") / "run"
    assert train(config(corpus, **STOP_HALFWAY), run, stop_after=4).status == "interrupted"
    return run


@pytest.fixture
def scene(stopped_run, tmp_path) -> Path:
    """``tmp_path`` holding a copy of the stopped run (``run``) and of another one (``other``)."""
    shutil.copytree(stopped_run, tmp_path / "run")
    shutil.copytree(stopped_run, tmp_path / "other")
    return tmp_path


def _metadata(step_dir: Path):
    with open(step_dir / ".metadata", "rb") as handle:
        return pickle.load(handle)  # our own file, written by DCP


def _edit_metadata(step_dir: Path, change: Callable) -> None:
    metadata = _metadata(step_dir)
    change(metadata)
    with open(step_dir / ".metadata", "wb") as handle:
        pickle.dump(metadata, handle)


def _first_tensor(metadata):
    key = next(k for k in metadata.state_dict_metadata if k.startswith("model."))
    return metadata.state_dict_metadata[key]


def _paths(metadata, relative_path: str) -> None:
    for info in metadata.storage_data.values():
        info.relative_path = relative_path


class _Reduced:
    """Pickles as ``function(*args)``: a value DCP's writer never produces."""

    def __init__(self, function, *args):
        self.reduced = (function, args)

    def __reduce__(self):
        return self.reduced


def _properties_pickling_as(state: Callable[[TensorProperties], tuple]):
    def edit(metadata):
        original = TensorProperties.__getstate__
        TensorProperties.__getstate__ = lambda self: state(self)
        try:
            buffer = pickle.dumps(metadata)
        finally:
            TensorProperties.__getstate__ = original
        return buffer

    return edit


def _truncate(path: Path, keep: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _plant(scene: Path, damage: Callable[[Path, Path], object]) -> Path:
    """``run/checkpoints/step_99``: a copy of step 4 that ``damage(step_dir, scene)`` changes."""
    checkpoints = scene / "run" / "checkpoints"
    planted = checkpoints / PLANTED
    shutil.copytree(checkpoints / STEP4, planted)
    damage(planted, scene)
    return planted


def _write_pickled(step_dir: Path, make_bytes: Callable) -> None:
    data = make_bytes(_metadata(step_dir))
    (step_dir / ".metadata").write_bytes(data)


def _replace_with_fifo(step_dir: Path, name: str) -> None:
    (step_dir / name).unlink()
    os.mkfifo(step_dir / name)


def _replace_with_link(step_dir: Path, name: str, target: Path) -> None:
    (step_dir / name).unlink()
    (step_dir / name).symlink_to(target)


OTHER_SHARD = "other/checkpoints/step_00000004/__0_0.distcp"

# (id, damage, the one-line message); every case names the planted checkpoint's files.
DAMAGES = [
    ("absolute-path", lambda d, s: _edit_metadata(d, lambda m: _paths(m, str(s / OTHER_SHARD))),
     r"names the file '/.*', not one of its shard files"),
    ("parent-path", lambda d, s: _edit_metadata(d, lambda m: _paths(m, "../../../" + OTHER_SHARD)),
     r"names the file '\.\./.*', not one of its shard files"),
    ("fifo-path", lambda d, s: (os.mkfifo(d / "pipe"), _edit_metadata(d, lambda m: _paths(m, "pipe"))),
     r"names the file 'pipe', not one of its shard files"),
    ("fifo-shard", lambda d, s: _replace_with_fifo(d, "__0_0.distcp"),
     r"__0_0\.distcp is not a regular file"),
    ("fifo-metadata", lambda d, s: _replace_with_fifo(d, ".metadata"),
     r"\.metadata is not a regular file"),
    ("linked-shard", lambda d, s: _replace_with_link(d, "__0_0.distcp", s / OTHER_SHARD),
     r"__0_0\.distcp is not a regular file"),
    ("linked-metadata", lambda d, s: _replace_with_link(d, ".metadata", s / "other/checkpoints/step_00000004/.metadata"),
     r"\.metadata is a symbolic link"),
    ("offset-past-the-end", lambda d, s: _edit_metadata(
        d, lambda m: [setattr(i, "offset", i.offset + 10**9) for i in m.storage_data.values()]),
     r"lies at bytes .* of __0_0\.distcp, which has \d+ \(the file is truncated\)"),
    ("negative-length", lambda d, s: _edit_metadata(
        d, lambda m: [setattr(i, "length", -1) for i in m.storage_data.values()]),
     r"length -1"),
    ("truncated-shard", lambda d, s: _truncate(d / "__0_0.distcp", 0.5),
     r"of __0_0\.distcp, which has \d+ \(the file is truncated\)"),
    ("truncated-metadata", lambda d, s: _truncate(d / ".metadata", 0.5),
     r"cannot read checkpoint .*step_00000099/\.metadata"),
    ("empty-metadata", lambda d, s: (d / ".metadata").write_bytes(b""),
     r"cannot read checkpoint .*step_00000099/\.metadata"),
    ("unknown-memory-format-code", lambda d, s: _write_pickled(d, _properties_pickling_as(
        lambda p: (p.dtype, p.layout, False, _Reduced(_MEM_FORMAT_ENCODING, 7), False))),
     r"\.metadata: it is not DCP metadata \(ValueError"),
    ("channels-last", lambda d, s: _write_pickled(d, _properties_pickling_as(
        lambda p: (p.dtype, p.layout, False, _MEM_FORMAT_ENCODING.TORCH_CHANNELS_LAST, False))),
     r"has layout torch\.strided and format torch\.channels_last"),
    ("unknown-layout-name", lambda d, s: _write_pickled(d, _properties_pickling_as(
        lambda p: (p.dtype, _Reduced(_get_layout, "torch.bogus"), False,
                   _MEM_FORMAT_ENCODING.TORCH_CONTIGUOUS_FORMAT, False))),
     r"\.metadata: it is not DCP metadata \(KeyError"),
    ("sparse-layout", lambda d, s: _edit_metadata(
        d, lambda m: setattr(_first_tensor(m).properties, "layout", torch.sparse_coo)),
     r"has layout torch\.sparse_coo"),
    ("huge-size", lambda d, s: _edit_metadata(
        d, lambda m: setattr(_first_tensor(m), "size", torch.Size([2**45]))),
     r"of size \(35184372088832,\) needs more bytes than its files hold"),
    ("negative-size", lambda d, s: _edit_metadata(
        d, lambda m: setattr(_first_tensor(m), "size", torch.Size([-4, 8]))),
     r"has the size"),
    ("chunk-outside", lambda d, s: _edit_metadata(
        d, lambda m: setattr(_first_tensor(m).chunks[0], "offsets", torch.Size([10**6, 0]))),
     r"has a chunk outside its size"),
    ("index-of-wrong-type", lambda d, s: _edit_metadata(
        d, lambda m: setattr(m, "state_dict_metadata", list(m.state_dict_metadata))),
     r"its index is not a mapping"),
    ("dtype-missing", lambda d, s: _edit_metadata(
        d, lambda m: setattr(_first_tensor(m).properties, "dtype", "float32")),
     r"has no dtype"),
    ("transform", lambda d, s: _edit_metadata(
        d, lambda m: [setattr(i, "transform_descriptors", ["zstd"]) for i in m.storage_data.values()]),
     r"asks for transforms"),
    ("not-metadata", lambda d, s: (d / ".metadata").write_bytes(pickle.dumps({"a": 1})),
     r"it holds a dict, not DCP metadata"),
    ("foreign-class", lambda d, s: (d / ".metadata").write_bytes(pickle.dumps(_Reduced(print, "x"))),
     r"refers to builtins\.print.*refusing to load it"),
]  # fmt: skip


class _Alarm:
    """Fails a call that hangs (a FIFO opened for reading waits for a writer forever)."""

    def __enter__(self):
        signal.signal(signal.SIGALRM, self._ring)
        signal.alarm(60)

    def __exit__(self, *exc):
        signal.alarm(0)

    @staticmethod
    def _ring(*_):
        raise TimeoutError("the call hung")


def _one_line_error(capsys, argv: list[str]) -> tuple[int, str]:
    capsys.readouterr()
    with _Alarm():
        code = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(lines) == 1, err
    return code, lines[0]


@pytest.mark.parametrize("damage,message", [d[1:] for d in DAMAGES], ids=[d[0] for d in DAMAGES])
def test_a_damaged_checkpoint_is_one_line_for_generate_and_load_run(scene, capsys, damage, message):
    planted = _plant(scene, damage)
    before = tree_state(scene)
    code, line = _one_line_error(capsys, ["generate", str(scene / "run"), "--max-new-tokens", "2"])
    assert code == 2 and re.search(message, line) and PLANTED in line, line
    with _Alarm(), pytest.raises(CheckpointError, match=message) as raised:
        hyperp.load_run(scene / "run", device="cpu")
    assert "\n" not in str(raised.value) and str(planted) in str(raised.value)
    assert tree_state(scene) == before


def test_a_resume_skips_a_damaged_checkpoint_and_says_why(corpus, scene, capsys):
    run = scene / "run"
    _plant(scene, lambda d, s: _truncate(d / "__0_0.distcp", 0.5))
    (run / "checkpoints" / PLANTED / "checkpoint.json").write_text('{"step": 99}')
    other_before = tree_state(scene / "other")
    straight = scene / "straight"
    train(config(corpus, **STOP_HALFWAY), straight)
    capsys.readouterr()
    with _Alarm():
        assert train(config(corpus, **STOP_HALFWAY), run).status == "finished"
    out = capsys.readouterr().out
    assert re.search(rf"skipping checkpoint {PLANTED}, which does not read: .*truncated", out), out
    assert f"resumed from {run / 'checkpoints' / STEP4} at step 4" in out
    assert logged(run) == logged(straight)
    assert tree_state(scene / "other") == other_before


def test_a_resume_with_no_checkpoint_that_reads_is_one_line(scene, capsys, corpus):
    run = scene / "run"
    _plant(scene, lambda d, s: _edit_metadata(d, lambda m: _paths(m, "../x.distcp")))
    _truncate(run / "checkpoints" / STEP4 / ".metadata", 0.5)
    outside = tree_state(scene / "other")
    kept = {p: p.read_bytes() for p in (run / "checkpoints").rglob("*") if p.is_file()}
    code, line = _one_line_error(capsys, _resume_argv(corpus, run))
    assert code == 2, line
    assert re.search(r"no checkpoint in .* reads \(step_00000099: .*; step_00000004: .*\)", line)
    assert {p: p.read_bytes() for p in kept} == kept  # nothing of the run's checkpoints is lost
    assert tree_state(scene / "other") == outside


def _resume_argv(corpus, run: Path) -> list[str]:
    from training import TINY

    values = {**TINY, **STOP_HALFWAY, "data.path": str(corpus)}
    return ["train", "--out", str(run), *(f"--{k}={v}" for k, v in values.items())]


# -- code in a planted file, with its positive control --------------------------------------------

STOCK_READER = textwrap.dedent(
    """
    import sys, torch, torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemReader
    state = {"model.x": torch.zeros(1)}
    try:
        dcp.load(state, storage_reader=FileSystemReader(sys.argv[1]), no_dist=True)
    except Exception:
        pass
    """
)


class _Payload:
    def __init__(self, canary: Path):
        self.canary = str(canary)

    def __reduce__(self):
        return (os.system, (f"touch {self.canary}",))


def test_a_planted_metadata_pickle_fires_under_dcps_reader_but_not_in_hyperp(corpus, scene, capsys):
    canary = scene / "canary"
    planted = _plant(
        scene, lambda d, s: (d / ".metadata").write_bytes(pickle.dumps(_Payload(canary)))
    )
    # Positive control: the same file runs its code under plain pickle and under DCP's own reader.
    plain = f"import pickle; pickle.load(open({str(planted / '.metadata')!r}, 'rb'))"
    subprocess.run([sys.executable, "-c", plain], check=True, env=subprocess_env())
    assert canary.exists()
    canary.unlink()
    subprocess.run([sys.executable, "-c", STOCK_READER, str(planted)], env=subprocess_env())
    assert canary.exists()
    canary.unlink()
    before = tree_state(scene)
    code, line = _one_line_error(capsys, ["generate", str(scene / "run"), "--max-new-tokens", "2"])
    assert code == 2 and "refers to posix.system" in line and PLANTED in line, line
    with pytest.raises(CheckpointError, match="refusing to load it"):
        hyperp.load_run(scene / "run", device="cpu")
    assert tree_state(scene) == before and not canary.exists()
    # A resume skips it (saying so) and continues from step 4; nothing runs.
    assert train(config(corpus, **STOP_HALFWAY), scene / "run").status == "finished"
    assert "skipping checkpoint step_00000099, which does not read" in capsys.readouterr().out
    assert not canary.exists()


def test_a_linked_step_directory_is_skipped_and_never_followed(corpus, scene, capsys):
    run = scene / "run"
    (run / "checkpoints" / PLANTED).symlink_to(scene / "other" / "checkpoints" / STEP4)
    assert [s for s, _ in list_checkpoints(run / "checkpoints")] == [4]
    other = tree_state(scene / "other")
    assert train(config(corpus, **STOP_HALFWAY), run).status == "finished"
    out = capsys.readouterr().out
    assert f"skipping {run / 'checkpoints' / PLANTED}: a symbolic link" in out
    assert f"resumed from {run / 'checkpoints' / STEP4}" in out
    assert tree_state(scene / "other") == other


def test_a_linked_partial_directory_is_never_written_through(corpus, scene):
    run = scene / "run"
    outside = scene / "outside"
    outside.mkdir()
    (run / "checkpoints" / ".step_00000008.partial").symlink_to(outside)
    assert train(config(corpus, **STOP_HALFWAY), run).status == "finished"
    assert list(outside.iterdir()) == []
    assert [s for s, _ in list_checkpoints(run / "checkpoints")][-1] == 8
