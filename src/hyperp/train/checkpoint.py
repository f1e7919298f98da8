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

Loading never unpickles arbitrary objects: DCP's metadata file (a pickle, which DCP's own reader
loads with plain ``pickle.load``) is read by an unpickler that admits only DCP's own metadata
classes, and every non-tensor value is read with ``torch.load(weights_only=True)``. A checkpoint
from elsewhere cannot run code. Nor can it send the reader elsewhere: the metadata is checked
before any shard is read (only the shard files the writer names, regular files in the step
directory, byte ranges inside them, tensors of known dtype and layout that fit those bytes), and
files are opened without following links or blocking on FIFOs. A resume takes the newest
checkpoint that reads, naming each one it skips. Saves never write through a link: a linked step
directory is skipped, and the partial directory is created afresh.
"""

from __future__ import annotations

import contextlib
import errno
import io
import math
import os
import pickle
import re
import shutil
import socket
import stat
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, NoReturn

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.filesystem import FileSystem, _StorageInfo
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    StorageMeta,
    TensorProperties,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import ReadItem

from hyperp.fileio import atomic_write_json, atomic_write_text

__all__ = [
    "KEEP",
    "MARKER",
    "CheckpointError",
    "Checkpointer",
    "incomplete_checkpoints",
    "keep_checkpoint",
    "list_checkpoints",
    "load_model_weights",
    "read_metadata",
    "read_tensors",
    "root_cause",
]

MARKER = "checkpoint.json"
KEEP = "KEEP"  # a file of this name in a step directory keeps it from pruning
FORMAT = "hyperp-dcp"
FORMAT_VERSION = 2
_NAME = re.compile(r"^step_(\d{8})$")
# DCP warns on every single-process save or load, even when asked for one explicitly.
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable")
_LEGACY_NAME = re.compile(r"^step_\d{8}\.pt$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: incomplete, foreign, or not matching this run."""


class UnreadableCheckpoint(CheckpointError):
    """A checkpoint whose files do not read (truncated, malformed, linked, or planted); a resume
    falls back to the checkpoint before it."""


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
# The only files a checkpoint's metadata may send the reader to: the per-rank shard files that
# DCP's FileSystemWriter names ``__{rank}_{count}.distcp``, beside the metadata.
_SHARD_FILE = re.compile(r"^__\d{1,6}_\d{1,6}\.distcp$")


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


def _open_regular(path: Path) -> io.BufferedReader:
    """``path`` opened for reading if it is a regular file itself: never through a symbolic
    link, and never blocking on a FIFO or a device."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise UnreadableCheckpoint(
                f"{path} is a symbolic link; a checkpoint holds only files"
            ) from None
        raise
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise UnreadableCheckpoint(f"{path} is not a regular file; a checkpoint holds only files")
    return os.fdopen(descriptor, "rb")


class _ConfinedFileSystem(FileSystem):
    """DCP's file system, opening files to read with :func:`_open_regular`."""

    @contextlib.contextmanager
    def create_stream(self, path: str | os.PathLike, mode: str) -> Iterator[io.IOBase]:
        if mode != "rb":
            raise CheckpointError(f"a checkpoint is read, never written to ({path})")
        with _open_regular(Path(path)) as stream:
            yield stream


class SafeFileSystemReader(FileSystemReader):
    """DCP's file reader, confined to its checkpoint directory: the metadata pickle is read by
    the restricted unpickler and checked (:func:`check_metadata`) before anything else is read,
    and every file is opened as a regular file, never through a link."""

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__(path)
        self.fs = _ConfinedFileSystem()

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        path = Path(self._get_metadata_path(kwargs.get("rank")))
        try:
            with _open_regular(path) as handle:
                metadata = _MetadataUnpickler(handle).load()
        except CheckpointError:
            raise
        except pickle.UnpicklingError as error:
            raise UnreadableCheckpoint(
                f"cannot read checkpoint {path}: {_first_line(error)}"
            ) from None
        except Exception as error:  # a malformed pickle raises almost anything
            raise UnreadableCheckpoint(
                f"cannot read checkpoint {path}: it is not DCP metadata "
                f"({type(error).__name__}: {_first_line(error)})"
            ) from None
        check_metadata(metadata, path)
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


def check_metadata(metadata: Any, path: Path) -> None:
    """Refuse metadata that DCP's writer does not make (a ``CheckpointError`` naming ``path``):
    only tensors of a known dtype in the strided layout and contiguous format, with chunks inside
    their tensor, stored in this directory's shard files at offsets and lengths within them."""

    def refuse(what: str) -> NoReturn:
        raise UnreadableCheckpoint(f"checkpoint metadata {path} is malformed: {what}")

    if not isinstance(metadata, Metadata):
        refuse(f"it holds a {type(metadata).__name__}, not DCP metadata")
    entries, storage = metadata.state_dict_metadata, metadata.storage_data
    if not isinstance(entries, dict) or not isinstance(storage, dict):
        refuse("its index is not a mapping")
    stored: dict[str, int] = {}  # bytes stored per key
    sizes: dict[str, int] = {}
    for index, info in storage.items():
        if not isinstance(index, MetadataIndex) or not isinstance(info, _StorageInfo):
            refuse(f"a storage entry of type {type(info).__name__}")
        name = info.relative_path
        if not isinstance(name, str) or not _SHARD_FILE.match(name):
            refuse(f"{index.fqn!r} names the file {name!r}, not one of its shard files")
        if not all(_is_int(n) and n >= 0 for n in (info.offset, info.length)):
            refuse(f"{index.fqn!r} has the offset {info.offset!r} and length {info.length!r}")
        if info.transform_descriptors:
            refuse(f"{index.fqn!r} asks for transforms {info.transform_descriptors!r}")
        if name not in sizes:
            try:
                status = (path.parent / name).lstat()
            except OSError as error:
                refuse(f"{name} cannot be read ({error.strerror})")
            if not stat.S_ISREG(status.st_mode):
                refuse(f"{name} is not a regular file")
            sizes[name] = status.st_size
        if info.offset + info.length > sizes[name]:
            refuse(
                f"{index.fqn!r} lies at bytes {info.offset}..{info.offset + info.length} of "
                f"{name}, which has {sizes[name]} (the file is truncated)"
            )
        stored[index.fqn] = stored.get(index.fqn, 0) + info.length
    for key, item in entries.items():
        if not isinstance(key, str):
            refuse(f"a key of type {type(key).__name__}")
        if isinstance(item, BytesStorageMetadata):
            continue
        if not isinstance(item, TensorStorageMetadata):
            refuse(f"{key!r} is a {type(item).__name__}")
        _check_tensor(key, item, stored.get(key, 0), refuse)


def _check_tensor(
    key: str, item: TensorStorageMetadata, stored: int, refuse: Callable[[str], NoReturn]
) -> None:
    properties = item.properties
    if not isinstance(properties, TensorProperties) or not isinstance(
        properties.dtype, torch.dtype
    ):
        refuse(f"{key!r} has no dtype")
    if (
        properties.layout is not torch.strided
        or properties.memory_format is not torch.contiguous_format
    ):
        refuse(f"{key!r} has layout {properties.layout} and format {properties.memory_format}")
    if not _is_shape(item.size) or not isinstance(item.chunks, list):
        refuse(f"{key!r} has the size {item.size!r}")
    numel = math.prod(item.size)
    if numel * properties.dtype.itemsize > stored:
        refuse(f"{key!r} of size {tuple(item.size)} needs more bytes than its files hold")
    for chunk in item.chunks:
        if not (
            isinstance(chunk, ChunkStorageMetadata)
            and _is_shape(chunk.offsets, len(item.size))
            and _is_shape(chunk.sizes, len(item.size))
            and all(o + s <= n for o, s, n in zip(chunk.offsets, chunk.sizes, item.size))
        ):
            refuse(f"{key!r} has a chunk outside its size {tuple(item.size)}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_shape(value: Any, dims: int | None = None) -> bool:
    return (
        isinstance(value, (torch.Size, tuple, list))
        and (dims is None or len(value) == dims)
        and all(_is_int(n) and n >= 0 for n in value)
    )


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
    """The DCP metadata of one checkpoint directory, read safely and checked."""
    try:
        return SafeFileSystemReader(path).read_metadata()
    except OSError as error:
        raise UnreadableCheckpoint(f"cannot read checkpoint {path}: {error}") from None


# -- finding checkpoints -------------------------------------------------------------------------


def _step_directories(directory: Path, *, linked: bool = False) -> list[tuple[int, Path]]:
    """Step directories (a symbolic link is never one), or with ``linked`` the links so named."""
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = _NAME.match(path.name)
        kind = path.lstat().st_mode if match else 0
        if stat.S_ISLNK(kind) if linked else stat.S_ISDIR(kind):
            found.append((int(match.group(1)), path))
    return sorted(found)


def list_checkpoints(directory: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(step, path)`` of every complete checkpoint in ``directory``, oldest first."""
    return [(s, p) for s, p in _step_directories(Path(directory)) if (p / MARKER).is_file()]


def incomplete_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """Step directories without a completion marker (never read)."""
    return [p for _, p in _step_directories(Path(directory)) if not (p / MARKER).is_file()]


def keep_checkpoint(run_dir: str | os.PathLike, step: int, why: str) -> Path | None:
    """Keep the checkpoint of ``step`` from pruning (a ``KEEP`` file saying ``why``); its path,
    or None when the run has no such checkpoint."""
    found = dict(list_checkpoints(Path(run_dir) / "checkpoints"))
    if step not in found:
        return None
    return atomic_write_text(found[step] / KEEP, why + "\n")


def _legacy_checkpoints(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if _LEGACY_NAME.match(p.name))


def _remove(path: Path) -> None:
    """Remove a file, a directory tree or a link (the link itself, never what it points to)."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISDIR(path.lstat().st_mode):
            shutil.rmtree(path)
        else:
            path.unlink()


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
        keep_steps: tuple[int, ...] = (),
    ) -> None:
        self.directory = Path(directory)
        self.components = components
        self.keep = keep
        self.keep_steps = set(keep_steps)
        self.async_save = async_save
        self.log = log
        self.distributed = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.distributed else 0
        self.world_size = dist.get_world_size() if self.distributed else 1
        self._group = None
        if self.distributed:
            # Background writes and the choice of checkpoint to resume must not share a
            # communicator with training (nor need its device).
            self._group = dist.new_group(backend="gloo")
        me = (socket.gethostname(), os.getpid())
        self._peers: list[tuple[str, int]] = [me] * self.world_size
        if self.distributed:  # to name a rank that dies during a background save
            dist.all_gather_object(self._peers, me, group=self._group)
        self._pending: tuple[Future, int, Path, dict[str, Any]] | None = None
        if self.rank == 0:
            for step in keep_steps:  # a step saved before --keep-step was given
                keep_checkpoint(self.directory.parent, step, "kept by --keep-step")

    # -- saving --------------------------------------------------------------------------------

    def save(self, step: int, extra: dict[str, Any] | None = None) -> None:
        """Write a checkpoint of ``step`` (collective). ``extra`` goes into the marker."""
        self.wait()
        partial = self.directory / f".step_{step:08d}.partial"
        if self.rank == 0:
            self.directory.mkdir(parents=True, exist_ok=True)
            _remove(partial)  # left by a save that a kill interrupted (a link: the link alone)
            partial.mkdir()  # exclusively: the shards never go through a link
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
        try:
            future.result()  # re-raises a failed write (a full disk, say)
        except (Exception, CheckpointException) as error:
            dead = self._dead_peers()
            if not dead:
                raise
            raise CheckpointError(
                f"the checkpoint of step {step} was not written: {', '.join(dead)} died during "
                f"the save; the previous checkpoint is intact. Find why in that rank's output, "
                "then rerun the same command to resume"
            ) from error
        self._finalize(step, partial, extra)

    def _dead_peers(self) -> list[str]:
        """The ranks on this host whose process is gone (a rank elsewhere cannot be checked)."""
        here, dead = socket.gethostname(), []
        for rank, (host, pid) in enumerate(self._peers):
            if host == here and rank != self.rank and not _alive(pid):
                dead.append(f"rank {rank} (pid {pid})")
        return dead

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
        if step in self.keep_steps:
            atomic_write_text(partial / KEEP, "kept by --keep-step\n")
        final = self.path_of(step)
        _remove(final)
        os.replace(partial, final)
        _fsync_directory(self.directory)
        self._prune()

    def _prune(self) -> None:
        """Remove all but the newest ``keep`` checkpoints (except those with a KEEP file), saying
        which; and the partial directories of interrupted saves."""
        prunable = [p for _, p in list_checkpoints(self.directory) if not (p / KEEP).exists()]
        for path in prunable[: -self.keep]:
            _remove(path)
            self.log(
                f"pruned checkpoint {path.name} (train.keep_checkpoints = {self.keep}; a file "
                f"named {KEEP} in a step directory, or --keep-step, keeps one)"
            )
        for path in self.directory.glob(".step_*.partial"):
            _remove(path)

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
        for _, path in _step_directories(self.directory, linked=True):
            self.log(f"skipping {path}: a symbolic link, which a checkpoint never is")
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

    def restore_newest(self) -> tuple[int, Path] | None:
        """Load the newest checkpoint that reads (collective): its step and path, or None when
        there is no checkpoint. One that does not read is skipped, saying why; every rank takes
        rank 0's list of checkpoints and they agree on each one before going on."""
        steps: list[int] | str = []
        if self.rank == 0:
            try:
                steps = [step for step, _ in reversed(list_checkpoints(self.directory))]
                self.latest()  # says what is skipped before any reading
            except CheckpointError as error:
                steps = str(error)
        steps = self._from_rank0(steps)
        if isinstance(steps, str):
            raise CheckpointError(steps)
        skipped = []
        for step in steps:
            path = self.path_of(step)
            why = None
            try:
                read_metadata(path)
            except UnreadableCheckpoint as error:
                why = str(error)
            if self._all_ranks(why is None):
                try:
                    self.restore(path)
                except UnreadableCheckpoint as error:
                    why = str(error)
                if self._all_ranks(why is None):
                    return step, path
            why = why or "another rank could not read it"
            self.log(f"skipping checkpoint {path.name}, which does not read: {why}")
            skipped.append(f"{path.name}: {why}")
        if skipped:
            raise CheckpointError(
                f"no checkpoint in {self.directory} reads ({'; '.join(skipped)}); move the "
                "directory aside to start afresh, or restore a copy of a checkpoint"
            )
        return None

    def _from_rank0(self, value: Any) -> Any:
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0, group=self._group)
        return box[0]

    def _all_ranks(self, ok: bool) -> bool:
        if not self.distributed:
            return ok
        flag = torch.tensor([int(ok)])
        dist.all_reduce(flag, op=dist.ReduceOp.MIN, group=self._group)
        return bool(flag.item())

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
                raise UnreadableCheckpoint(
                    f"checkpoint {path} holds a value that is not plain data ({_first_line(cause)}"
                    "); refusing to load it (the file may have been planted)"
                ) from None
            if isinstance(cause, UnreadableCheckpoint):
                raise cause from None
            if isinstance(cause, (OSError, EOFError)) or "PytorchStreamReader" in str(cause):
                raise UnreadableCheckpoint(
                    f"cannot read checkpoint {path}: {_first_line(cause)}"
                ) from None
            raise CheckpointError(
                f"checkpoint {path} does not fit this run ({_first_line(cause)}); resume with "
                "the config the run was started with, or start a new run directory"
            ) from error

    def _barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (an exited one not yet reaped by its parent does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    with contextlib.suppress(OSError, IndexError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    return True


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
