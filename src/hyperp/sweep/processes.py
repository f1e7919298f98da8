"""Processes a sweep started: is one still alive, which processes descend from it, stop them all.

A pid alone is not an identity (pids are reused), so a process is named by its pid and its start
time (field 22 of ``/proc/PID/stat``). Descendants are found through their parent pid, which is
how torchrun's ranks are reached: each rank runs in its own session, so signalling the process
group of the launched command misses them.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = [
    "TIED_TO_PARENT",
    "die_with_parent",
    "parent_death_signal",
    "process_start",
    "process_tree",
    "stop_processes",
    "this_host",
]

_LINUX = sys.platform.startswith("linux")
_PR_SET_PDEATHSIG = 1
# Set in a launched command's environment: each trainer process (torchrun's ranks too) asks for
# SIGTERM when its parent dies, so none outlives the sweep that started it.
TIED_TO_PARENT = "HYPERP_TIED_TO_PARENT"


def _prctl() -> Callable[..., int] | None:
    if not _LINUX:
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def parent_death_signal(signum: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` for ``subprocess.Popen``: the child gets ``signum`` when the thread that
    started it ends (on Linux; None elsewhere). The sweep's worker thread waits for its child, so
    that happens only when the sweep dies, even of SIGKILL; a trainer then checkpoints and
    exits, and the next sweep resumes it. The function is bound before the fork: the child runs
    no Python import and takes no lock."""
    prctl = _prctl()
    if prctl is None:
        return None
    parent, kill, getppid, getpid = os.getpid(), os.kill, os.getppid, os.getpid

    def arm() -> None:
        prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)
        if getppid() != parent:  # the parent died before the signal was armed
            kill(getpid(), signum)

    return arm


def die_with_parent(signum: int = signal.SIGTERM) -> None:
    """Ask for ``signum`` when this process's parent dies (for a process another program
    started, such as a torchrun rank, whose agent then dies). Linux only; elsewhere nothing."""
    prctl = _prctl()
    if prctl is not None:
        prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)


def this_host() -> str:
    return socket.gethostname()


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name (index 0 is field 3, the state)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def process_start(pid: int) -> str | None:
    """The start time of a live process (a token to compare, not a clock), or None if there is no
    such process. A zombie counts as gone. Without /proc, only whether the pid exists."""
    if pid <= 0:
        return None
    if not _LINUX:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return "?"
    fields = _stat_fields(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return None
    return fields[19]


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children


def process_tree(pid: int) -> dict[int, str]:
    """``{pid: start}`` of a live process and all its live descendants."""
    start = process_start(pid)
    if start is None:
        return {}
    tree = {pid: start}
    if not _LINUX:
        return tree
    children, frontier = _children(), [pid]
    while frontier:
        for child in children.get(frontier.pop(), []):
            child_start = process_start(child)
            if child not in tree and child_start is not None:
                tree[child] = child_start
                frontier.append(child)
    return tree


def _signal(pid: int, signum: int, *, group: bool = False) -> None:
    """Signal a process, or the process group it leads (falling back to the process alone)."""
    if group:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signum)
            return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signum)


def stop_processes(roots: Iterable[int], grace_s: float, *, every_process: bool = False) -> None:
    """Stop launched commands and everything they started.

    Each root's process group gets one SIGTERM: the trainer checkpoints and exits, and torchrun
    passes the signal on to each rank once (a second signal would make a trainer stop without
    its checkpoint). With ``every_process``, each process of the trees gets it instead (for a
    torchrun that ignores SIGTERM, see ``hyperp.sweep.slurm``). Whatever is still alive after
    ``grace_s`` gets SIGKILL, ranks included. The trees are taken before signalling, while the
    ranks' parent still lives.
    """
    trees: dict[int, str] = {}
    roots = [root for root in roots if process_start(root) is not None]
    for root in roots:
        trees.update(process_tree(root))
    if every_process:
        for pid in trees:
            _signal(pid, signal.SIGTERM)
    else:
        for root in roots:
            _signal(root, signal.SIGTERM, group=True)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        for root in roots:  # processes started since (a rank's helper) belong to the tree too
            trees.update(process_tree(root))
        if all(process_start(pid) != start for pid, start in trees.items()):
            return
        time.sleep(0.1)
    for pid, start in trees.items():
        if process_start(pid) == start:
            _signal(pid, signal.SIGKILL)
