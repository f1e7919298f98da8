"""Checkpoints: one file per saved step, written atomically, the last K kept.

A checkpoint holds everything a resumed run needs to take exactly the steps it would have taken:
model and optimizer state (whole tensors, gathered from FSDP2 shards), the LR schedule, the data
loader's position, RNG states and the counters. Files are written by rank 0 through
:func:`hyperp.fileio.atomic_write`, so a kill during a save leaves the previous files intact.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor

from hyperp.fileio import atomic_write

__all__ = [
    "CHECKPOINT_VERSION",
    "full_model_state",
    "list_checkpoints",
    "load_latest_checkpoint",
    "load_model_state",
    "load_model_weights",
    "prune_checkpoints",
    "save_checkpoint",
]

CHECKPOINT_VERSION = 1
_NAME = re.compile(r"^step_(\d{8})\.pt$")


def checkpoint_path(directory: Path, step: int) -> Path:
    return directory / f"step_{step:08d}.pt"


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every checkpoint file in ``directory``, oldest first."""
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = _NAME.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def save_checkpoint(directory: Path, step: int, payload: dict[str, Any], keep: int) -> Path:
    path = atomic_write(
        checkpoint_path(directory, step),
        lambda handle: torch.save({"version": CHECKPOINT_VERSION, **payload}, handle),
    )
    prune_checkpoints(directory, keep)
    return path


def prune_checkpoints(directory: Path, keep: int) -> None:
    """Keep the newest ``keep`` checkpoints; also remove temporary files of saves that a kill
    interrupted (they never carry a checkpoint's name, so they were never read)."""
    for _, path in list_checkpoints(directory)[:-keep]:
        path.unlink(missing_ok=True)
    for path in directory.glob(".step_*.tmp"):
        path.unlink(missing_ok=True)


def load_latest_checkpoint(directory: Path) -> tuple[dict[str, Any], Path] | None:
    """The newest readable checkpoint; an unreadable file (e.g. a disk that filled up) is
    skipped with a warning and the one before it is used."""
    for _, path in reversed(list_checkpoints(directory)):
        try:
            payload = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as error:
            warnings.warn(f"skipping unreadable checkpoint {path}: {error}", stacklevel=2)
            continue
        if payload.get("version") != CHECKPOINT_VERSION:
            raise ValueError(
                f"{path} is a checkpoint of format version {payload.get('version')}, this hyperp "
                f"reads version {CHECKPOINT_VERSION}; resume it with the hyperp that wrote it"
            )
        return payload, path
    return None


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict with every sharded DTensor gathered, on the CPU."""
    state = {}
    for name, value in model.state_dict().items():
        if isinstance(value, DTensor):
            value = value.full_tensor()
        state[name] = value.detach().to("cpu", copy=True)
    return state


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load whole tensors into a model whose parameters may be FSDP2 shards."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(
            f"checkpoint does not fit this model: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}; resume with the model config the run was started with"
        )
    with torch.no_grad():
        for name, target in own.items():
            source = state[name]
            if tuple(source.shape) != tuple(target.shape):
                raise ValueError(
                    f"checkpoint tensor {name} has shape {tuple(source.shape)}, the model has "
                    f"{tuple(target.shape)}; resume with the model config the run was started with"
                )
            if isinstance(target, DTensor):
                shard = distribute_tensor(
                    source.to(target.device, target.dtype),
                    target.device_mesh,
                    target.placements,
                    src_data_rank=None,
                )
                target.to_local().copy_(shard.to_local())
            else:
                target.copy_(source)


def load_model_weights(
    run_dir: str | Path, step: int | None = None
) -> tuple[dict[str, torch.Tensor], int]:
    """The model weights of a run directory as whole CPU tensors, and their step.

    ``step=None`` takes the newest complete checkpoint; otherwise that step must exist.
    """
    directory = Path(run_dir) / "checkpoints"
    found = dict(list_checkpoints(directory))
    if not found:
        raise FileNotFoundError(f"{run_dir} has no checkpoint (looked in {directory})")
    if step is None:
        step = max(found)
    elif step not in found:
        raise ValueError(
            f"{run_dir} has no checkpoint of step {step}; it has steps {sorted(found)}"
        )
    payload = torch.load(found[step], map_location="cpu", weights_only=False)
    return payload["model"], step
