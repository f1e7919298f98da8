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
from training import assert_same_weights, cli_args, config, final_weights, logged, run_cli, torchrun

STOP = {"train.checkpoint_every": 4, "train.eval_every": 0}


def radii(run: Path) -> dict[str, torch.Tensor]:
    _, path = list_checkpoints(run / "checkpoints")[-1]
    state = read_tensors(path, "optimizer.state.")
    return {key: value for key, value in state.items() if key.endswith(".radius")}


def assert_close_runs(run: Path, reference: Path) -> None:
    """A resharded resume: equal up to the order of floating-point reductions."""
    one, two = logged(reference), logged(run)
    assert one.keys() == two.keys()
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=2e-4), step
    expected, got = final_weights(reference), final_weights(run)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-3, atol=1e-4)
    expected_radii, got_radii = radii(reference), radii(run)
    assert expected_radii.keys() == got_radii.keys() and expected_radii
    for name in expected_radii:  # fixed at the first step, whatever the sharding since
        torch.testing.assert_close(got_radii[name], expected_radii[name], rtol=1e-6, atol=0)


def stopped(corpus, out: Path, nproc: int, strategy: str = "fsdp") -> Path:
    """A run stopped (with a checkpoint) after step 4 of 8, on ``nproc`` processes."""
    if nproc == 1:
        assert train(config(corpus, **STOP), out, stop_after=4).status == "interrupted"
    else:
        done = torchrun(corpus, out, nproc, strategy, args=("--stop-after", "4"), **STOP)
        assert done.returncode == 0, done.stdout + done.stderr
    assert [s for s, _ in list_checkpoints(out / "checkpoints")] == [4]
    return out


def resume(corpus, out: Path, nproc: int, strategy: str = "fsdp") -> None:
    if nproc == 1:
        assert train(config(corpus, **STOP), out).status == "finished"
    else:
        done = torchrun(corpus, out, nproc, strategy, **STOP)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "resumed from" in done.stdout


@pytest.fixture(scope="module")
def single_run(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "run"
    train(config(corpus, **STOP), out)
    return out


@pytest.mark.distributed
def test_two_process_resume_is_bit_exact_and_reshards_to_one_and_to_ddp(
    corpus, tmp_path, single_run
):
    straight = tmp_path / "straight"  # written in the background while training goes on
    done = torchrun(corpus, straight, 2, **STOP, **{"train.async_checkpoint": True})
    assert done.returncode == 0, done.stdout + done.stderr
    split = stopped(corpus, tmp_path / "split", 2)
    for name in ("to-one", "to-ddp"):
        shutil.copytree(split, tmp_path / name)
    resume(corpus, split, 2)
    assert logged(split) == logged(straight)
    assert_same_weights(split, straight)
    resume(corpus, tmp_path / "to-one", 1)
    assert_close_runs(tmp_path / "to-one", single_run)
    resume(corpus, tmp_path / "to-ddp", 2, "ddp")
    assert_close_runs(tmp_path / "to-ddp", single_run)


@pytest.mark.distributed
def test_one_process_and_ddp_checkpoints_resume_sharded(corpus, tmp_path, single_run):
    from_one = stopped(corpus, tmp_path / "from-one", 1)
    resume(corpus, from_one, 2)
    assert_close_runs(from_one, single_run)
    from_ddp = stopped(corpus, tmp_path / "from-ddp", 2, "ddp")
    resume(corpus, from_ddp, 2, "fsdp")
    assert_close_runs(from_ddp, single_run)


def test_async_checkpoints_match_synchronous_ones(corpus, tmp_path, single_run):
    run = tmp_path / "async"
    settings = {**STOP, "train.async_checkpoint": True}
    assert train(config(corpus, **settings), run, stop_after=6).status == "interrupted"
    assert [s for s, _ in list_checkpoints(run / "checkpoints")] == [4, 6]
    assert train(config(corpus, **settings), run).status == "finished"
    assert logged(run) == logged(single_run)
    assert_same_weights(run, single_run)


def test_a_checkpoint_without_its_marker_is_skipped(corpus, tmp_path, single_run, capsys):
    run = tmp_path / "run"
    train(config(corpus, **{**STOP, "train.checkpoint_every": 2}), run, stop_after=6)
    newest = run / "checkpoints" / "step_00000006"
    (newest / MARKER).unlink()
    assert [s for s, _ in list_checkpoints(run / "checkpoints")] == [4]
    capsys.readouterr()
    assert train(config(corpus, **{**STOP, "train.checkpoint_every": 2}), run).status == "finished"
    out = capsys.readouterr().out
    assert f"skipping incomplete checkpoint {newest}" in out
    assert "resumed from" in out and "step_00000004 at step 4" in out
    assert logged(run) == logged(single_run)
    assert_same_weights(run, single_run)


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
        train(config(corpus, **STOP), run)
    assert not canary.exists()
    # An old-style single-file checkpoint is never unpickled either.
    shutil.rmtree(run / "checkpoints")
    (run / "checkpoints").mkdir()
    torch.save({"step": 99, "x": Payload(canary)}, run / "checkpoints" / "step_99999999.pt")
    with pytest.raises(CheckpointError, match="older hyperp"):
        train(config(corpus, **STOP), run)
    assert not canary.exists()
