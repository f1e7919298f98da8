"""What a sweep writes into a run directory, and how it reads the end of a training process.

Beside the trainer's own files (``config.json``, ``metrics.jsonl``, ``checkpoints/``,
``summary.json``, ``error.txt``), a sweep keeps:

- ``launch.json``: how the run was last launched: the launcher, the command, the overrides and
  processes, and under SLURM the job id and the job's log file;
- ``.running``: the process that runs the trainer now: pid, its start time (a reused pid is not
  mistaken for it), host, SLURM job id, and the process looking after it (the sweep or the
  job); removed when that process has ended;
- ``interrupted.txt``: one line saying why the run stopped before finishing; the next
  ``hyperp sweep`` resumes it from its last checkpoint;
- ``error.txt`` when the trainer failed without writing one: the last lines of ``train.log``,
  then the reason (the last line, which ``hyperp fit`` and ``hyperp sweep status`` show).

One reader and one writer for each file live here; the launchers and the status use them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hyperp.fileio import atomic_write_json, atomic_write_text
from hyperp.sweep.processes import process_start, this_host

__all__ = [
    "Outcome",
    "clear_attempt",
    "error_reason",
    "finish_run",
    "read_launch",
    "read_marker",
    "write_launch",
    "write_marker",
]

# Lines of train.log kept in error.txt when a run fails without writing one.
_TAIL_LINES = 20
# A line that states an error: a Python exception, a CLI error, torchrun's report of a rank.
_ERROR_LINE = re.compile(
    r"^\S*(Error|Exception|Interrupt)\b|\berror:|exitcode\s*:|Signal \d+|Killed|Segmentation fault"
)
# Signals that stop a healthy process from outside: kills, the OOM killer, a node going away,
# SLURM's warnings. Others (SIGSEGV, SIGABRT, ...) are crashes and fail the run.
_INTERRUPTING = {
    signal.SIGKILL,
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGUSR1,
    signal.SIGUSR2,
}
# The trainer's exit status after SIGINT/SIGTERM, once it has saved a checkpoint.
_STOPPED_EXIT = 130


@dataclass(frozen=True)
class Outcome:
    state: str  # finished | failed | interrupted
    reason: str | None = None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def read_launch(directory: Path) -> dict[str, Any]:
    return _read_json(directory / "launch.json")


def write_launch(directory: Path, **fields: Any) -> None:
    atomic_write_json(directory / "launch.json", {**fields, "time": time.time()})


def read_marker(directory: Path) -> dict[str, Any]:
    """The ``.running`` record, with ``alive`` set: False when its process has ended, None when
    it ran on another host (this machine cannot tell)."""
    marker = _read_json(directory / ".running")
    if not marker:
        return {}
    pid = marker.get("pid")
    if marker.get("host") not in (None, this_host()):
        marker["alive"] = None
    elif isinstance(pid, int):
        started = process_start(pid)
        # Markers without a start time (older sweeps) trust the pid alone.
        marker["alive"] = started is not None and marker.get("start") in (None, started)
    else:
        marker["alive"] = False
    return marker


def write_marker(directory: Path, pid: int, job_id: str | None = None) -> None:
    """Record the process running the trainer, and its owner (this process: the sweep or the
    SLURM job), so a later sweep can tell a process left behind from one still looked after."""
    atomic_write_json(
        directory / ".running",
        {
            "pid": pid,
            "start": process_start(pid),
            "host": this_host(),
            "job_id": job_id,
            "owner": {"pid": os.getpid(), "start": process_start(os.getpid())},
        },
    )


def clear_attempt(directory: Path) -> None:
    """Before a launch: the previous attempt's failure or interruption no longer applies."""
    for name in ("error.txt", "interrupted.txt"):
        (directory / name).unlink(missing_ok=True)


def error_reason(directory: Path) -> str:
    """The last non-empty line of ``error.txt`` (where a traceback names the exception)."""
    lines = (directory / "error.txt").read_text(errors="replace").splitlines()
    lines = [line.strip() for line in lines if line.strip()]
    return lines[-1] if lines else "failed (empty error.txt)"


def _last_checkpoint(directory: Path) -> int | None:
    from hyperp.train.checkpoint import list_checkpoints  # torch: only for a killed process

    found = list_checkpoints(directory / "checkpoints")
    return found[-1][0] if found else None


def _exit_signal(return_code: int, tail: list[str]) -> signal.Signals | None:
    """The signal that ended the process, or (under torchrun) one of its ranks."""
    number = -return_code if return_code < 0 else None
    if number is None:
        for line in reversed(tail):
            match = re.search(r"exitcode\s*:\s*-(\d+)", line)
            if match:
                number = int(match.group(1))
                break
    try:
        return signal.Signals(number) if number else None
    except ValueError:
        return None


def _log_tail(log: Path) -> list[str]:
    with contextlib.suppress(OSError):
        lines = log.read_text(errors="replace").splitlines()
        return [line.rstrip() for line in lines if line.strip()][-200:]
    return []


def finish_run(
    directory: Path, return_code: int, log: Path, *, stopped: str | None = None
) -> Outcome:
    """How a training process ended, recorded in its run directory.

    ``stopped`` is set when the process was stopped on purpose (the sweep was interrupted, the
    SLURM job was preempted or cancelled) and says why. In order: ``summary.json`` means
    finished; a stopped process is interrupted and resumes next time; an ``error.txt`` from the
    trainer means failed; a process killed by a signal from outside after a checkpoint is
    interrupted; anything else failed, and ``error.txt`` quotes the exit status or signal and
    the last error line.
    """
    (directory / ".running").unlink(missing_ok=True)
    if (directory / "summary.json").exists():
        return Outcome("finished")
    if (directory / "error.txt").exists():
        if not stopped:
            return Outcome("failed", error_reason(directory))
        # A trainer failing while it is stopped (a rank whose peer stopped first) is the stop's
        # doing: the run resumes, and the error is kept aside.
        error = error_reason(directory)
        (directory / "error.txt").replace(directory / "error-while-stopping.txt")
        stopped = f"{stopped}; while stopping, the trainer reported: {error}"
    tail = _log_tail(log)
    reason = stopped or _interruption(directory, return_code, tail)
    if reason is not None:
        atomic_write_text(directory / "interrupted.txt", reason + "\n")
        return Outcome("interrupted", reason)
    return _fail(directory, tail, _cause(return_code, tail))


def _interruption(directory: Path, return_code: int, tail: list[str]) -> str | None:
    """Why a process nobody meant to stop ended resumable (a checkpoint to resume from, and an
    end that is not the trainer's fault), or None."""
    if return_code == _STOPPED_EXIT:
        return "stopped by SIGINT or SIGTERM; it saved a checkpoint"
    exit_signal = _exit_signal(return_code, tail)
    if exit_signal in _INTERRUPTING or (return_code == 0 and exit_signal is None):
        step = _last_checkpoint(directory)
        if step is not None:
            how = f"killed by {exit_signal.name}" if exit_signal else "exited 0 without finishing"
            return f"{how} after the checkpoint of step {step}"
    return None


def _cause(return_code: int, tail: list[str]) -> str:
    exit_signal = _exit_signal(return_code, tail)
    if exit_signal in _INTERRUPTING:
        return f"killed by {exit_signal.name} before its first checkpoint"
    if exit_signal is not None:
        return f"killed by {exit_signal.name}"
    if return_code == 0:
        return "the trainer exited without writing summary.json"
    return f"exit status {return_code}"


def _fail(directory: Path, tail: list[str], cause: str) -> Outcome:
    errors = [line.strip() for line in tail if _ERROR_LINE.search(line.strip())]
    reason = f"{cause}: {errors[-1]}" if errors else f"{cause} (no error message in train.log)"
    atomic_write_text(
        directory / "error.txt",
        "\n".join(["--- last lines of train.log ---", *tail[-_TAIL_LINES:], reason]) + "\n",
    )
    return Outcome("failed", reason)
