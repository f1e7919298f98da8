"""One run directory, one trainer, and every rank on the same directory.

Rank 0 takes an exclusive lock on ``RUN/trainer.lock`` (``flock``: the kernel releases it when
the holder dies, even by SIGKILL, so a lock whose holder is gone is simply taken over) and writes
into it who holds it (pid, host, start time) and a random token. Every other rank then reads the
file through its own view of the filesystem and must find rank 0's token: ranks that were given
different ``--out`` directories, or nodes that do not share the filesystem, stop with an error
instead of training side by side and overwriting each other's files. They wait up to
``$HYPERP_SHARED_FS_TIMEOUT`` seconds (default 60) for the file to appear, since a network
filesystem can show a new file late.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from hyperp.train.distributed import Distributed

__all__ = ["LOCK_NAME", "RunDirectoryError", "RunLock"]

LOCK_NAME = "trainer.lock"
# How long other ranks wait for rank 0's lock file to appear (network filesystems lag).
TIMEOUT_VARIABLE = "HYPERP_SHARED_FS_TIMEOUT"
DEFAULT_TIMEOUT_S = 60.0


class RunDirectoryError(ValueError):
    """The run directory is in use, or not the same directory on every rank."""


class RunLock:
    """Held by rank 0 for as long as the trainer runs (see the module docstring)."""

    def __init__(self, out_dir: Path, dist_info: Distributed) -> None:
        self.path = Path(out_dir) / LOCK_NAME
        self.dist = dist_info
        self._handle = None

    def acquire(self, log=print) -> None:
        """Take the lock on rank 0 and check that every rank sees it (collective)."""
        token = 0
        failure: Exception | None = None
        if self.dist.is_main:
            try:
                token = self._take(log)
            except RunDirectoryError as error:
                failure = error
            except OSError as error:
                failure = RunDirectoryError(
                    f"cannot write to the run directory {self.path.parent} "
                    f"({error.strerror or error}); choose a writable --out"
                )
        token = self.dist.broadcast_int(token)  # 0: rank 0 could not take the directory
        if failure is not None:
            raise failure
        if token == 0:
            raise RunDirectoryError(
                f"rank 0 could not take the run directory {self.path.parent}; see its message"
            )
        self._check_every_rank_sees(token)

    def _take(self, log) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 (held until release)
        try:
            import fcntl

            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(self.path)
            handle.close()
            raise RunDirectoryError(
                f"{self.path.parent} is in use by another trainer ({_describe(holder)}); wait "
                "for it to finish or stop it, or choose another --out"
            ) from None
        except ImportError:
            pass  # no flock (Windows): the token check below still runs
        previous = _read(self.path)
        if previous and previous.get("pid") != os.getpid():
            log(f"taking over {self.path} from a trainer that is gone ({_describe(previous)})")
        token = secrets.randbits(62) + 1
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "world_size": self.dist.world_size,
            "token": token,
        }
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(holder) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
        self._handle = handle
        return token

    def _check_every_rank_sees(self, token: int) -> None:
        if not self.dist.enabled:
            return
        seen = None
        if not self.dist.is_main:
            deadline = time.monotonic() + float(os.environ.get(TIMEOUT_VARIABLE, DEFAULT_TIMEOUT_S))
            while True:
                seen = _read(self.path).get("token")
                if seen == token or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
        blind = torch.zeros(self.dist.world_size, dtype=torch.float64, device=self.dist.device)
        if not self.dist.is_main and seen != token:
            blind[self.dist.rank] = 1
        dist.all_reduce(blind)
        ranks = [r for r, flag in enumerate(blind.tolist()) if flag]
        if ranks:
            raise RunDirectoryError(
                f"rank(s) {ranks} do not see the run directory {self.path.parent} that rank 0 "
                "locked: every rank must be given the same --out, on a filesystem all nodes share"
            )

    def release(self) -> None:
        """Empty the file (a clean exit leaves no holder to report) and unlock."""
        if self._handle is not None:
            with contextlib.suppress(OSError):
                self._handle.seek(0)
                self._handle.truncate()
                self._handle.close()
            self._handle = None


def _read(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "holder unknown"
    return f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"
