"""Checkpoints with ``torch.distributed.checkpoint`` (DCP): every rank writes its own shards.

Layout of ``RUN/checkpoints/``::

    step_00000400/            one complete checkpoint
        .metadata             DCP's index of every tensor and value
        __0_0.distcp ...      one file per rank: that rank's shards
        checkpoint.json       the completion marker, written last
    .step_00000600.partial/   a save in progress (or one a kill interrupted)

A checkpoint counts only when complete: the ranks write into ``.step_*.partial``, and after all of
them are done rank 0 writes the marker and renames the directory. A directory without the marker
is skipped with a message; the last ``keep`` complete ones are kept. No rank ever gathers the
whole model or optimizer: under FSDP2 each rank saves its shards, and loading reshards them onto
any number of ranks (or onto DDP, or one process).

Loading never unpickles arbitrary objects: DCP's metadata file (a pickle) is read by an
unpickler that admits only DCP's own metadata classes, and every non-tensor value is read with
``torch.load(weights_only=True)``. A checkpoint from elsewhere cannot run code.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import re
import shutil
import time
import warnings
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta, TensorStorageMetadata
from torch.distributed.checkpoint.planner import ReadItem

from hyperp.fileio import atomic_write_json

__all__ = [
    "MARKER",
    "CheckpointError",
    "Checkpointer",
    "incomplete_checkpoints",
    "list_checkpoints",
    "load_model_weights",
    "read_metadata",
    "read_tensors",
    "root_cause",
]

MARKER = "checkpoint.json"
FORMAT = "hyperp-dcp"
FORMAT_VERSION = 2
_NAME = re.compile(r"^step_(\d{8})$")
# DCP warns on every single-process save or load, even when asked for one explicitly.
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable")
_LEGACY_NAME = re.compile(r"^step_\d{8}\.pt$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: incomplete, foreign, or not matching this run."""


# -- reading safely ------------------------------------------------------------------------------

# What DCP's metadata pickle may name: its own dataclasses, torch.Size, dtypes, layouts, paths.
_METADATA_GLOBALS = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata",
        "TensorStorageMetadata",
        "BytesStorageMetadata",
        "ChunkStorageMetadata",
        "TensorProperties",
        "MetadataIndex",
        "StorageMeta",
        "_MEM_FORMAT_ENCODING",
    },
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},
    "pathlib": {"PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath", "Path"},
    "collections": {"OrderedDict"},
}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        allowed = name in _METADATA_GLOBALS.get(module, ())
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            allowed = True
        if not allowed:
            raise pickle.UnpicklingError(
                f"the checkpoint's metadata refers to {module}.{name}, which no checkpoint "
                "contains; refusing to load it (the file may have been planted)"
            )
        return super().find_class(module, name)


class SafeFileSystemReader(FileSystemReader):
    """DCP's file reader, with the metadata pickle read by the restricted unpickler."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        rank = kwargs.get("rank")
        path = self._get_metadata_path(rank)
        with open(path, "rb") as handle:
            metadata = _MetadataUnpickler(handle).load()
        if not isinstance(metadata, Metadata):
            raise pickle.UnpicklingError(f"{path} does not hold DCP metadata")
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafeLoadPlanner(DefaultLoadPlanner):
    """DCP's load planner, reading non-tensor values with ``weights_only=True``."""

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        loaded = torch.load(value, weights_only=True)
        if self.flatten_state_dict:
            from torch.distributed.checkpoint._nested_dict import set_element

            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], loaded)
        else:
            self.state_dict[read_item.dest_index.fqn] = loaded


def read_metadata(path: Path) -> Metadata:
    """The DCP metadata of one checkpoint directory, read safely."""
    try:
        return SafeFileSystemReader(path).read_metadata()
    except (OSError, EOFError, pickle.UnpicklingError, AttributeError, TypeError) as error:
        raise CheckpointError(f"cannot read checkpoint {path}: {error}") from None


# -- finding checkpoints -------------------------------------------------------------------------


def _step_directories(directory: Path) -> list[tuple[int, Path]]:
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = _NAME.match(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return sorted(found)


def list_checkpoints(directory: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(step, path)`` of every complete checkpoint in ``directory``, oldest first."""
    return [(s, p) for s, p in _step_directories(Path(directory)) if (p / MARKER).is_file()]


def incomplete_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """Step directories without a completion marker (never read)."""
    return [p for _, p in _step_directories(Path(directory)) if not (p / MARKER).is_file()]


def _legacy_checkpoints(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if _LEGACY_NAME.match(p.name))


def _fsync_directory(path: Path) -> None:
    with contextlib.suppress(OSError):
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


# -- the checkpointer ----------------------------------------------------------------------------


class Checkpointer:
    """Saves and restores a run's stateful pieces (see :mod:`hyperp.train.state`) with DCP.

    ``components`` maps names to objects with ``state_dict()`` / ``load_state_dict()``. Every
    rank calls :meth:`save` and :meth:`restore` together. With ``async_save`` the step loop goes
    on while the shards are written (from a copy taken at save time, over a process group of its
    own); the checkpoint is finalized (marker, rename, pruning) once written, at the latest at
    the next save or at :meth:`close`.
    """

    def __init__(
        self,
        directory: Path,
        components: dict[str, Any],
        *,
        keep: int,
        async_save: bool = False,
        log: Callable[[str], None] = print,
    ) -> None:
        self.directory = Path(directory)
        self.components = components
        self.keep = keep
        self.async_save = async_save
        self.log = log
        self.distributed = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.distributed else 0
        self.world_size = dist.get_world_size() if self.distributed else 1
        self._group = None
        if async_save and self.distributed:
            # Writes in a background thread must not share a communicator with training.
            self._group = dist.new_group(backend="gloo")
        self._pending: tuple[Future, int, Path, dict[str, Any]] | None = None

    # -- saving --------------------------------------------------------------------------------

    def save(self, step: int, extra: dict[str, Any] | None = None) -> None:
        """Write a checkpoint of ``step`` (collective). ``extra`` goes into the marker."""
        self.wait()
        partial = self.directory / f".step_{step:08d}.partial"
        if self.rank == 0:
            self.directory.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(partial, ignore_errors=True)  # left by a save that a kill interrupted
        self._barrier()
        writer = FileSystemWriter(partial, sync_files=True)
        if self.async_save:
            future = dcp.async_save(
                self.components,
                storage_writer=writer,
                process_group=self._group,
                no_dist=not self.distributed,
            )
            self._pending = (future, step, partial, extra or {})
        else:
            dcp.save(self.components, storage_writer=writer, no_dist=not self.distributed)
            self._finalize(step, partial, extra or {})

    def poll(self) -> None:
        """Finalize a finished background save (cheap; call once per step)."""
        if self._pending is not None and self._pending[0].done():
            self.wait()

    def wait(self) -> None:
        """Wait for a background save and finalize it."""
        if self._pending is None:
            return
        future, step, partial, extra = self._pending
        self._pending = None
        future.result()  # re-raises a failed write (a full disk, say)
        self._finalize(step, partial, extra)

    def _finalize(self, step: int, partial: Path, extra: dict[str, Any]) -> None:
        """Marker, rename, prune: rank 0 alone, once every rank has written its shards."""
        if self.rank != 0:
            return
        marker = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "step": step,
            "world_size": self.world_size,
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **extra,
        }
        atomic_write_json(partial / MARKER, marker)
        final = self.path_of(step)
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)
        _fsync_directory(self.directory)
        self._prune()

    def _prune(self) -> None:
        for _, path in list_checkpoints(self.directory)[: -self.keep]:
            shutil.rmtree(path, ignore_errors=True)
        for path in self.directory.glob(".step_*.partial"):
            shutil.rmtree(path, ignore_errors=True)

    def close(self) -> None:
        self.wait()
        if self._group is not None:
            dist.destroy_process_group(self._group)
            self._group = None

    # -- loading -------------------------------------------------------------------------------

    def latest(self) -> tuple[int, Path] | None:
        """The newest complete checkpoint, saying which step directories are skipped and why."""
        complete = list_checkpoints(self.directory)
        newest = complete[-1][0] if complete else -1
        for path in incomplete_checkpoints(self.directory):
            if int(path.name[5:]) > newest:
                self.log(f"skipping incomplete checkpoint {path} (no {MARKER}: its save stopped)")
        if not complete and _legacy_checkpoints(self.directory):
            raise CheckpointError(
                f"{self.directory} holds only single-file checkpoints (step_*.pt) of an older "
                "hyperp, which this version does not load (they could run code when read). "
                "Start the run again in a new directory (--out)."
            )
        return complete[-1] if complete else None

    def path_of(self, step: int) -> Path:
        """Where the complete checkpoint of ``step`` lives."""
        return self.directory / f"step_{step:08d}"

    def restore(self, path: Path) -> None:
        """Load checkpoint ``path`` into the components, resharding as needed (collective)."""
        metadata = read_metadata(path)
        rng = self.components.get("rng")
        if rng is not None:
            saved = {
                key.split(".")[1] for key in metadata.state_dict_metadata if key.startswith("rng.")
            }
            rng.source = rng.rank if f"rank{rng.rank}" in saved else 0
        try:
            dcp.load(
                self.components,
                storage_reader=SafeFileSystemReader(path),
                planner=SafeLoadPlanner(),
                no_dist=not self.distributed,
            )
        except (Exception, CheckpointException) as error:
            cause = root_cause(error)
            if isinstance(cause, pickle.UnpicklingError):
                raise CheckpointError(
                    f"checkpoint {path} holds a value that is not plain data ({_first_line(cause)}"
                    "); refusing to load it (the file may have been planted)"
                ) from None
            raise CheckpointError(
                f"checkpoint {path} does not fit this run ({_first_line(cause)}); resume with "
                "the config the run was started with, or start a new run directory"
            ) from error

    def _barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def root_cause(error: BaseException) -> BaseException:
    """The innermost error: through ``raise ... from`` chains and DCP's per-rank failures."""
    while True:
        failures = getattr(error, "failures", None)  # CheckpointException: {rank: error}
        if isinstance(failures, dict) and failures:
            inner = next(iter(failures.values()))
            error = inner[0] if isinstance(inner, tuple) else inner
        elif error.__cause__ is not None:
            error = error.__cause__
        else:
            return error


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


# -- reading a run's weights in one process ------------------------------------------------------


def load_model_weights(
    run_dir: str | os.PathLike, step: int | None = None
) -> tuple[dict[str, torch.Tensor], int]:
    """The model weights of a run directory as whole CPU tensors, and their step.

    ``step=None`` takes the newest complete checkpoint; otherwise that step must exist. Works in
    one process whatever number of ranks saved the checkpoint; reads safely (no unpickling).
    """
    directory = Path(run_dir) / "checkpoints"
    found = dict(list_checkpoints(directory))
    if not found:
        raise FileNotFoundError(f"{run_dir} has no complete checkpoint (looked in {directory})")
    if step is None:
        step = max(found)
    elif step not in found:
        raise ValueError(
            f"{run_dir} has no checkpoint of step {step}; it has steps {sorted(found)}"
        )
    return read_tensors(found[step], "model."), step


def read_tensors(path: str | os.PathLike, prefix: str) -> dict[str, torch.Tensor]:
    """Every tensor of one checkpoint whose key starts with ``prefix`` (``"model."``,
    ``"optimizer.state."``), whole and on the CPU, keyed without the prefix; in one process,
    whatever number of ranks saved it."""
    path = Path(path)
    metadata = read_metadata(path)
    tensors = {
        key: torch.empty(item.size, dtype=item.properties.dtype)
        for key, item in metadata.state_dict_metadata.items()
        if key.startswith(prefix) and isinstance(item, TensorStorageMetadata)
    }
    if not tensors:
        raise CheckpointError(f"checkpoint {path} holds no tensors under {prefix!r}")
    dcp.load(
        tensors,
        storage_reader=SafeFileSystemReader(path),
        planner=SafeLoadPlanner(),
        no_dist=True,
    )
    return {key.removeprefix(prefix): value for key, value in tensors.items()}
