"""Distributed checkpoints: resharding round trips, completion markers, kills mid-save, and
files from elsewhere that must not run code."""

import json
import os
import pickle
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp

from hyperp.train.checkpoint import (
    MARKER,
    Checkpointer,
    CheckpointError,
    list_checkpoints,
    read_tensors,
)
from hyperp.train.state import RunCounters
from hyperp.train.trainer import train
from training import (
    COMPARED_PRECISIONS,
    MACHINE_NS_DTYPE,
    PIN_FP32,
    STOP_HALFWAY,
    assert_equal_up_to_rounding,
    assert_same_weights,
    cli_args,
    config,
    logged,
    run_cli,
    torchrun,
)

STOP = STOP_HALFWAY


def stopped(corpus, out: Path, nproc: int, settings: dict, strategy: str = "fsdp") -> Path:
    """A run stopped (with a checkpoint) after step 4 of 8, on ``nproc`` processes."""
    if nproc == 1:
        assert train(config(corpus, **settings), out, stop_after=4).status == "interrupted"
    else:
        done = torchrun(corpus, out, nproc, strategy, args=("--stop-after", "4"), **settings)
        assert done.returncode == 0, done.stdout + done.stderr
    assert [s for s, _ in list_checkpoints(out / "checkpoints")] == [4]
    return out


def resume(corpus, out: Path, nproc: int, settings: dict, strategy: str = "fsdp") -> None:
    if nproc == 1:
        assert train(config(corpus, **settings), out).status == "finished"
    else:
        done = torchrun(corpus, out, nproc, strategy, **settings)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "resumed from" in done.stdout


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory):
    """``reference(ns_dtype)``: the uninterrupted one-process run, trained once per precision."""
    runs = {}

    def run_in(ns_dtype: str) -> Path:
        if ns_dtype not in runs:
            out = tmp_path_factory.mktemp(f"single-{ns_dtype}") / "run"
            train(config(corpus, **STOP, **{"optim.ns_dtype": ns_dtype}), out)
            runs[ns_dtype] = out
        return runs[ns_dtype]

    return run_in


@pytest.mark.distributed
@pytest.mark.parametrize("ns_dtype", COMPARED_PRECISIONS)
def test_two_process_resume_is_bit_exact_and_reshards_to_one_and_to_ddp(
    corpus, tmp_path, reference, ns_dtype
):
    settings = {**STOP, "optim.ns_dtype": ns_dtype}
    straight = tmp_path / "straight"  # written in the background while training goes on
    done = torchrun(corpus, straight, 2, **settings, **{"train.async_checkpoint": True})
    assert done.returncode == 0, done.stdout + done.stderr
    split = stopped(corpus, tmp_path / "split", 2, settings)
    for name in ("to-one", "to-ddp"):
        shutil.copytree(split, tmp_path / name)
    resume(corpus, split, 2, settings)
    assert logged(split) == logged(straight)
    assert_same_weights(split, straight)
    resume(corpus, tmp_path / "to-one", 1, settings)
    assert_equal_up_to_rounding(reference(ns_dtype), tmp_path / "to-one", ns_dtype)
    resume(corpus, tmp_path / "to-ddp", 2, settings, "ddp")
    assert_equal_up_to_rounding(reference(ns_dtype), tmp_path / "to-ddp", ns_dtype)


@pytest.mark.distributed
def test_one_process_and_ddp_checkpoints_resume_sharded(corpus, tmp_path, reference):
    settings = {**STOP, **PIN_FP32}
    from_one = stopped(corpus, tmp_path / "from-one", 1, settings)
    resume(corpus, from_one, 2, settings)
    assert_equal_up_to_rounding(reference("fp32"), from_one, "fp32")
    from_ddp = stopped(corpus, tmp_path / "from-ddp", 2, settings, "ddp")
    resume(corpus, from_ddp, 2, settings, "fsdp")
    assert_equal_up_to_rounding(reference("fp32"), from_ddp, "fp32")


def test_async_checkpoints_match_synchronous_ones(corpus, tmp_path, reference):
    run = tmp_path / "async"
    settings = {**STOP, "train.async_checkpoint": True, "optim.ns_dtype": MACHINE_NS_DTYPE}
    assert train(config(corpus, **settings), run, stop_after=6).status == "interrupted"
    assert [s for s, _ in list_checkpoints(run / "checkpoints")] == [4, 6]
    assert train(config(corpus, **settings), run).status == "finished"
    assert logged(run) == logged(reference(MACHINE_NS_DTYPE))
    assert_same_weights(run, reference(MACHINE_NS_DTYPE))


def test_a_checkpoint_without_its_marker_is_skipped(corpus, tmp_path, reference, capsys):
    run = tmp_path / "run"
    settings = {**STOP, "train.checkpoint_every": 2, "optim.ns_dtype": MACHINE_NS_DTYPE}
    train(config(corpus, **settings), run, stop_after=6)
    newest = run / "checkpoints" / "step_00000006"
    (newest / MARKER).unlink()
    assert [s for s, _ in list_checkpoints(run / "checkpoints")] == [4]
    capsys.readouterr()
    assert train(config(corpus, **settings), run).status == "finished"
    out = capsys.readouterr().out
    assert f"skipping incomplete checkpoint {newest}" in out
    assert "resumed from" in out and "step_00000004 at step 4" in out
    assert logged(run) == logged(reference(MACHINE_NS_DTYPE))
    assert_same_weights(run, reference(MACHINE_NS_DTYPE))


def test_a_kill_during_a_save_leaves_the_previous_checkpoint_valid(corpus, tmp_path):
    overrides = {"train.steps": 30, "train.checkpoint_every": 1, "train.eval_every": 0}
    straight = tmp_path / "straight"
    train(config(corpus, **overrides), straight)
    for attempt in range(8):  # until the kill lands inside a save
        run = tmp_path / f"run{attempt}"
        process = run_cli(cli_args(corpus, run, **overrides))
        killed_mid_save = False
        deadline = time.time() + 120
        while process.poll() is None and time.time() < deadline:
            partial = list((run / "checkpoints").glob(".step_*.partial"))
            if partial and list_checkpoints(run / "checkpoints"):
                process.send_signal(signal.SIGKILL)
                process.wait()
                killed_mid_save = any(p.exists() for p in partial)
                break
        if killed_mid_save:
            break
        process.kill()
        process.wait()
    assert killed_mid_save, "no kill landed inside a save"
    complete = list_checkpoints(run / "checkpoints")
    for _, path in complete:  # every complete checkpoint reads
        assert read_tensors(path, "model.")
    finish = run_cli(cli_args(corpus, run, **overrides))
    output, _ = finish.communicate(timeout=300)
    assert finish.returncode == 0, output
    assert f"resumed from {complete[-1][1]}" in output
    assert logged(run) == logged(straight)
    assert_same_weights(run, straight)


# -- files from elsewhere ------------------------------------------------------------------------


class Payload:
    """Unpickling this runs a shell command that creates a file."""

    def __init__(self, canary: Path) -> None:
        self.canary = canary

    def __reduce__(self):
        return (os.system, (f"touch {self.canary}",))


def plant(directory: Path, step: int, state: dict) -> Path:
    """A checkpoint directory that looks complete (marker included)."""
    path = directory / f"step_{step:08d}"
    dcp.save(state, checkpoint_id=path, no_dist=True)
    (path / MARKER).write_text(json.dumps({"step": step}))
    return path


def test_a_planted_value_does_not_run(tmp_path):
    canary = tmp_path / "canary"
    evil = {"counters": {"wall_time_s": 1.0, "val_loss": Payload(canary), "losses": []}}
    plant(tmp_path / "checkpoints", 7, evil)
    checkpointer = Checkpointer(tmp_path / "checkpoints", {"counters": RunCounters()}, keep=2)
    _, path = checkpointer.latest()
    with pytest.raises(CheckpointError, match=r"not plain data.*refusing to load it"):
        checkpointer.restore(path)
    assert not canary.exists()


def test_planted_metadata_does_not_run(corpus, tmp_path):
    run = tmp_path / "run"
    train(config(corpus, **STOP), run, stop_after=4)
    canary = tmp_path / "canary"
    planted = run / "checkpoints" / "step_00000099"
    shutil.copytree(run / "checkpoints" / "step_00000004", planted)
    (planted / ".metadata").write_bytes(pickle.dumps(Payload(canary)))
    with pytest.raises(CheckpointError, match=r"refusing to load it .*planted"):
        read_tensors(planted, "model.")
    assert not canary.exists()
    # An old-style single-file checkpoint is never unpickled either.
    shutil.rmtree(run / "checkpoints")
    (run / "checkpoints").mkdir()
    torch.save({"step": 99, "x": Payload(canary)}, run / "checkpoints" / "step_99999999.pt")
    with pytest.raises(CheckpointError, match="older hyperp"):
        train(config(corpus, **STOP), run)
    assert not canary.exists()
