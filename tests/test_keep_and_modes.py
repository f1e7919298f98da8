"""Pruning says what it removes and spares kept steps; files get the user's umask, which is read
once and never changed (a process-wide change races with other threads)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading

from hyperp import fileio
from hyperp.cli import main
from hyperp.train.checkpoint import KEEP, list_checkpoints
from support import subprocess_env
from training import TINY


def test_pruning_names_what_it_removes_and_spares_kept_steps(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    values = {**TINY, "data.path": str(corpus), "train.checkpoint_every": 2}
    values |= {"train.keep_checkpoints": 1, "train.eval_every": 0}
    argv = ["train", "--out", str(run), *(f"--{k}={v}" for k, v in values.items())]
    assert main([*argv, "--stop-after", "4"]) == 0
    (run / "checkpoints" / "step_00000004" / KEEP).write_text("mine\n")  # a user's marker
    assert main([*argv, "--keep-step", "6"]) == 0
    out = capsys.readouterr().out
    assert "pruned checkpoint step_00000002 (train.keep_checkpoints = 1" in out
    assert "pruned checkpoint step_00000006" not in out
    assert [s for s, _ in list_checkpoints(run / "checkpoints")] == [4, 6, 8]
    assert (run / "checkpoints" / "step_00000006" / KEEP).is_file()


def test_the_umask_is_read_once_and_never_set(tmp_path, monkeypatch):
    child = "from hyperp.fileio import UMASK; print(oct(UMASK))"
    for mask in (0o022, 0o027, 0o002):
        done = subprocess.run(
            [sys.executable, "-c", child],
            env=subprocess_env(),
            capture_output=True,
            text=True,
            preexec_fn=lambda mask=mask: os.umask(mask),
            check=True,
        )
        assert done.stdout.strip() == oct(mask)

    def refuse(_mask):
        raise AssertionError("os.umask changes the mask of every thread")

    monkeypatch.setattr(os, "umask", refuse)
    written: list[int] = []
    writer = threading.Thread(
        target=lambda: written.append(
            fileio.atomic_write_text(tmp_path / "a.txt", "x").stat().st_mode
        )
    )
    writer.start()
    writer.join()
    assert written == [stat.S_IFREG | (0o666 & ~fileio.UMASK)]
