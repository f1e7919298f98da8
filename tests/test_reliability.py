"""Hostile conditions: a full disk, a read-only directory, and many kills at random moments."""

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hyperp.sweep.processes import process_start, process_tree
from hyperp.train.checkpoint import list_checkpoints, read_tensors
from hyperp.train.trainer import train
from support import subprocess_env
from training import (
    PIN_FP32,
    SPREAD,
    TIMING,
    assert_equal_up_to_rounding,
    assert_same_summary,
    assert_same_weights,
    cli_args,
    config,
    logged,
    run_cli,
)

ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@contextlib.contextmanager
def tmpfs(path: Path, options: str):
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def hyperp_train(args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "hyperp", "train", *args],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@pytest.mark.skipif(not ROOT, reason="mounting a small tmpfs needs root")
def test_a_full_disk_keeps_the_previous_checkpoint(corpus, tmp_path):
    overrides = {"train.checkpoint_every": 2, "train.keep_checkpoints": 2, "train.eval_every": 0}
    straight = tmp_path / "straight"
    train(config(corpus, **overrides), straight, stop_after=2)
    one_checkpoint = tree_size(straight / "checkpoints")
    train(config(corpus, **overrides), straight)
    # Room for two checkpoints and the run's small files, not for a third beside them.
    with tmpfs(tmp_path / "small", f"size={int(2.6 * one_checkpoint) // 1024}k") as small:
        run = small / "run"
        done = hyperp_train(cli_args(corpus, run, **overrides))
        assert done.returncode == 2, done.stdout + done.stderr
        errors = [line for line in done.stderr.splitlines() if line.strip()]
        assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
        assert "could not write the checkpoint of step 6" in errors[0]
        assert "No space left on device" in errors[0]
        assert "the previous checkpoint (step 4 in" in errors[0] and "is intact" in errors[0]
        assert [s for s, _ in list_checkpoints(run / "checkpoints")] == [2, 4]
        for _, path in list_checkpoints(run / "checkpoints"):
            assert read_tensors(path, "model.")
        elsewhere = tmp_path / "elsewhere"
        shutil.copytree(run, elsewhere)
    done = hyperp_train(cli_args(corpus, elsewhere, **overrides))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "resumed from" in done.stdout
    assert logged(elsewhere) == logged(straight)
    assert_same_weights(elsewhere, straight)


def test_a_read_only_directory_is_one_line(corpus, tmp_path):
    if ROOT:  # root writes anywhere a mode allows nothing: use a read-only filesystem
        context = tmpfs(tmp_path / "ro", "ro,size=1m")
    else:
        (tmp_path / "ro").mkdir()
        (tmp_path / "ro").chmod(0o555)
        context = contextlib.nullcontext(tmp_path / "ro")
    with context as read_only:
        done = hyperp_train(cli_args(corpus, read_only / "run"))
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert "cannot write to the run directory" in done.stderr
    assert "choose a writable --out" in done.stderr


def trained_since(run: Path, moment: float) -> bool:
    """This launch has taken a step: metrics.jsonl was written after ``moment``."""
    metrics = run / "metrics.jsonl"
    return metrics.exists() and metrics.stat().st_mtime >= moment


@pytest.mark.slow
def test_many_kills_at_random_moments_change_nothing(corpus, tmp_path):
    """At least 10 SIGKILLs, some inside saves: every resume succeeds, and the final weights,
    metrics.jsonl and summary.json equal those of an uninterrupted run."""
    overrides = {
        "train.steps": 60,
        "train.checkpoint_every": 1,
        "train.eval_every": 10,
        "model.moe_sparsity": 2,
        "model.moe_granularity": 2,
    }
    straight = tmp_path / "straight"
    train(config(corpus, **overrides), straight)
    run = tmp_path / "run"
    chance = random.Random(1234)
    kills = in_saves = 0
    for _ in range(60):
        launched = time.time()
        process = run_cli(cli_args(corpus, run, **overrides))
        if kills < 12:
            # After training has started: a random moment, or the moment a save is under way.
            started = time.time() + 120
            while process.poll() is None and time.time() < started:
                if trained_since(run, launched) and list_checkpoints(run / "checkpoints"):
                    break
                time.sleep(0.01)
            target_save = chance.random() < 0.5
            deadline = time.time() + chance.uniform(0.0, 2.0)
            while process.poll() is None and time.time() < deadline:
                if target_save and list((run / "checkpoints").glob(".step_*.partial")):
                    break
                time.sleep(0.002)
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                process.wait()
                kills += 1
                # a save that this kill interrupted leaves its partial directory behind
                partial = (run / "checkpoints").glob(".step_*.partial")
                in_saves += any(path.stat().st_mtime >= launched for path in partial)
                continue
        output, _ = process.communicate(timeout=600)
        assert process.returncode == 0, output
        if (run / "summary.json").exists():
            break
    print(f"{kills} SIGKILLs, {in_saves} of them inside a save")
    assert kills >= 10 and in_saves >= 2, (kills, in_saves)
    assert (run / "metrics.jsonl").read_text() != ""
    assert logged(run) == logged(straight)
    assert logged(run, "val_loss") == logged(straight, "val_loss")
    assert_same_weights(run, straight)
    assert_same_summary(run, straight)


# -- kills in CI: inside saves too, a corrupt newest checkpoint, one process and FSDP -------------

KILLED_RUN = {"train.steps": 16, "train.checkpoint_every": 1, "train.eval_every": 4}
KILL_VARIANTS = {  # processes, SIGKILLs, settings
    "dense-one-process": (1, 3, {}),
    "moe-fsdp-two-processes": (
        2,
        2,
        {"model.moe_sparsity": 2, "model.moe_granularity": 2, "train.distributed": "fsdp",
         "train.threads": 1, **PIN_FP32},
    ),
}  # fmt: skip


def _launch(corpus, run: Path, nproc: int, overrides: dict) -> subprocess.Popen:
    command = [sys.executable, "-m", "hyperp", "train", *cli_args(corpus, run, **overrides)]
    if nproc > 1:
        torchrun = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
        command[1:1] = torchrun
    return subprocess.Popen(
        command,
        env=subprocess_env(OMP_NUM_THREADS="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _kill_everything(process: subprocess.Popen) -> str:
    """SIGKILL the process and all it started (torchrun's ranks); its output."""
    tree = process_tree(process.pid)
    for pid, start in tree.items():
        if process_start(pid) == start:
            os.kill(pid, signal.SIGKILL)
    output, _ = process.communicate(timeout=60)
    deadline = time.time() + 30
    while any(process_start(pid) == start for pid, start in tree.items()):
        assert time.time() < deadline, "a killed process lives on"
        time.sleep(0.05)
    return output


def _saved_since(checkpoints: Path, moment: float) -> bool:
    return any(path.stat().st_mtime >= moment for _, path in list_checkpoints(checkpoints))


@pytest.mark.parametrize("variant", list(KILL_VARIANTS))
def test_kills_inside_saves_and_a_corrupt_newest_checkpoint_change_nothing(
    corpus, tmp_path, variant
):
    """SIGKILLs at random moments (some inside saves), and after the second one the newest
    checkpoint is truncated: every resume succeeds (skipping the damaged checkpoint, saying so),
    and metrics.jsonl, summary.json and the final weights equal those of an uninterrupted run
    (exactly in one process; up to rounding across FSDP's reduction order, in fp32)."""
    nproc, most_kills, extra = KILL_VARIANTS[variant]
    overrides = {**KILLED_RUN, **extra}
    straight = tmp_path / "straight"
    single = {k: v for k, v in overrides.items() if k not in ("train.distributed", "train.threads")}
    train(config(corpus, **single), straight)
    run, checkpoints = tmp_path / "run", tmp_path / "run" / "checkpoints"
    chance = random.Random(16)
    kills = in_saves = 0
    corrupted = None
    for _ in range(10):
        launched = time.time()
        process = _launch(corpus, run, nproc, overrides)
        if kills < most_kills:
            deadline = time.time() + 300
            while process.poll() is None and not _saved_since(checkpoints, launched):
                assert time.time() < deadline, "no checkpoint was saved"
                time.sleep(0.01)
            target_save, until = chance.random() < 0.5, time.time() + chance.uniform(0.0, 0.5)
            while process.poll() is None and time.time() < until:
                if target_save and list(checkpoints.glob(".step_*.partial")):
                    break
                time.sleep(0.002)
            if process.poll() is None:
                output = _kill_everything(process)
                kills += 1
                in_saves += any(p.stat().st_mtime >= launched for p in checkpoints.glob(".step_*"))
                if corrupted is not None:
                    assert (
                        f"skipping checkpoint step_{corrupted:08d}, which does not read" in output
                    )
                    corrupted = -1
                if kills == 2:
                    corrupted, newest = list_checkpoints(checkpoints)[-1]
                    shard = newest / "__0_0.distcp"
                    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
                continue
        output, _ = process.communicate(timeout=600)
        assert process.returncode == 0, output
        if corrupted not in (None, -1):
            assert f"skipping checkpoint step_{corrupted:08d}, which does not read" in output
            corrupted = -1
        if (run / "summary.json").exists():
            break
    print(f"{variant}: {kills} SIGKILLs, {in_saves} inside a save")
    assert kills == most_kills and corrupted == -1
    if nproc == 1:
        assert logged(run) == logged(straight)
        assert logged(run, "val_loss") == logged(straight, "val_loss")
        assert_same_weights(run, straight)
        assert_same_summary(run, straight)
    else:
        assert_equal_up_to_rounding(straight, run, "fp32")
        one, two = (json.loads((r / "summary.json").read_text()) for r in (straight, run))
        assert one.keys() == two.keys() and two["processes"] == 2
        for key in one.keys() - TIMING - {"processes", "config"}:
            close = isinstance(one[key], float)
            assert two[key] == (
                pytest.approx(one[key], rel=SPREAD["fp32"].loss) if close else one[key]
            )
