"""The local launcher: a pool of worker threads, each driving one training process at a time.

Every process the sweep is responsible for is tracked by pid: the ones it started, and the ones
an earlier sweep left behind (one that ignored the SIGTERM its parent's death sent it), which it
waits for instead of starting the run a second time. A started command dies with the sweep, even
a sweep killed with SIGKILL: it gets SIGTERM (the parent-death signal; torchrun passes it on to
its ranks, which also ask for it themselves), checkpoints and exits, and the next sweep resumes
it. Stopping the sweep (Ctrl-C, SIGTERM) stops all of them, torchrun's ranks
included, and each run it stopped is recorded as interrupted, to be resumed next time.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from hyperp.fileio import atomic_write_text
from hyperp.sweep.processes import (
    TIED_TO_PARENT,
    parent_death_signal,
    process_start,
    stop_processes,
)
from hyperp.sweep.records import (
    Outcome,
    clear_attempt,
    error_reason,
    finish_run,
    read_marker,
    write_launch,
    write_marker,
)
from hyperp.sweep.spec import RunSpec, SweepSpec, default_train_command, expand, write_sweep_record
from hyperp.sweep.status import sweep_status

__all__ = ["SweepResult", "run_sweep"]

# How long a stopped trainer gets to save its checkpoint before it is killed.
STOP_GRACE_S = 60.0
_STOPPED = "the sweep was stopped"


@dataclass
class SweepResult:
    finished: list[str] = field(default_factory=list)  # run here, finished now
    skipped: list[str] = field(default_factory=list)  # finished before (or failed, not retried)
    failed: dict[str, str] = field(default_factory=dict)  # name -> reason
    stopped: dict[str, str] = field(default_factory=dict)  # name -> reason; resumes next time
    interrupted: bool = False  # the sweep itself was stopped


class _Interrupted(Exception):
    pass


class _Pool:
    """The live processes of the sweep (by pid), so that an interrupt can stop them all."""

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self.lock = threading.Lock()
        self.pids: set[int] = set()
        self.stopping = threading.Event()

    def stop_all(self) -> None:
        with self.lock:
            self.stopping.set()
            pids = list(self.pids)
        stop_processes(pids, self.grace_s)


def _wait_for_left_behind(run: RunSpec, pid: int, start: str | None, pool: _Pool) -> Outcome | None:
    """Wait for a process an earlier sweep started for this run (stopping it with the sweep);
    its outcome, or None when the run is to be launched again."""
    with pool.lock:
        if pool.stopping.is_set():
            return Outcome("interrupted", _STOPPED)
        pool.pids.add(pid)
    while process_start(pid) in (start, "?"):
        time.sleep(0.5)
    with pool.lock:
        pool.pids.discard(pid)
    directory = run.directory
    (directory / ".running").unlink(missing_ok=True)
    if (directory / "summary.json").exists():
        return Outcome("finished")
    if (directory / "error.txt").exists():
        return Outcome("failed", error_reason(directory))
    if pool.stopping.is_set():
        atomic_write_text(directory / "interrupted.txt", _STOPPED + "\n")
        return Outcome("interrupted", _STOPPED)
    return None  # it ended without a result: resume it


def _execute(run: RunSpec, command: list[str], environment: dict[str, str], pool: _Pool) -> Outcome:
    """Run one training process (after waiting for one left behind), and record how it ended."""
    directory = run.directory
    directory.mkdir(parents=True, exist_ok=True)
    marker = read_marker(directory)
    if marker.get("alive"):
        outcome = _wait_for_left_behind(run, marker["pid"], marker.get("start"), pool)
        if outcome is not None:
            return outcome
    clear_attempt(directory)
    write_launch(
        directory, launcher="local", command=command, overrides=run.overrides, nproc=run.nproc
    )
    log_path = directory / "train.log"
    with log_path.open("ab") as log:
        log.write(f"$ {shlex.join(command)}\n".encode())
        log.flush()
        # Start and register under the pool's lock, so an interrupt either sees this process
        # (and stops it) or stops us from starting it.
        with pool.lock:
            if pool.stopping.is_set():
                return Outcome("interrupted", _STOPPED)
            try:
                # A new session: the stop signal goes to the command's whole process group. The
                # command dies with the sweep (SIGTERM when this thread's process dies).
                process = subprocess.Popen(
                    command,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=environment,
                    start_new_session=True,
                    preexec_fn=parent_death_signal(),
                )
            except OSError as error:
                message = f"could not start {command[0]!r}: {error}"
                atomic_write_text(directory / "error.txt", message + "\n")
                return Outcome("failed", message)
            # Recorded at once: a sweep killed from here on leaves a process the next one finds.
            write_marker(directory, process.pid)
            pool.pids.add(process.pid)
        return_code = process.wait()
        with pool.lock:
            pool.pids.discard(process.pid)
    stopped = _STOPPED if pool.stopping.is_set() else None
    return finish_run(directory, return_code, log_path, stopped=stopped)


def run_sweep(
    spec: SweepSpec,
    *,
    workers: int | None = None,
    threads_per_worker: int | None = None,
    retry_failed: bool = False,
    train_command: Callable[[RunSpec, Path], list[str]] = default_train_command,
    on_event: Callable[[str, RunSpec, str | None], None] | None = None,
    stop_grace_s: float = STOP_GRACE_S,
) -> SweepResult:
    """Execute every run of the sweep that is not finished (nor failed, unless ``retry_failed``,
    nor queued or running on SLURM).

    Runs go to a pool of ``workers`` threads, each driving one training process at a time with
    ``threads_per_worker`` OMP/MKL threads. A run whose process an earlier sweep left running is
    waited for, not started twice. SIGINT/SIGTERM stop every process (each gets SIGTERM, then
    SIGKILL after ``stop_grace_s``) and return with ``interrupted`` set; the next call resumes.
    """
    workers = workers or spec.workers
    if workers < 1:
        raise ValueError("workers must be at least 1")
    threads = (
        threads_per_worker or spec.threads_per_worker or max(1, (os.cpu_count() or 1) // workers)
    )
    runs = expand(spec)
    write_sweep_record(spec, runs)
    result = SweepResult()
    todo = []
    for run, status in zip(runs, sweep_status(spec)):
        # A run on SLURM, or running under another live sweep on this host, is left alone;
        # one left behind by a dead sweep is taken over (waited for) in _execute.
        orphan = status.state == "running" and status.job_id is None and _left_behind(run)
        if (
            orphan
            or status.state in ("pending", "interrupted")
            or (status.state == "failed" and retry_failed)
        ):
            todo.append(run)
        else:
            result.skipped.append(run.name)
            if on_event:
                on_event(f"skip ({status.state})", run, status.reason)
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    environment[TIED_TO_PARENT] = "1"  # torchrun's ranks too: see hyperp.cli.train
    pool = _Pool(stop_grace_s)

    def raise_interrupt(signum, frame):
        raise _Interrupted

    in_main_thread = threading.current_thread() is threading.main_thread()
    previous_handler = None
    if in_main_thread:
        previous_handler = signal.signal(signal.SIGTERM, raise_interrupt)
    executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sweep-worker")
    futures: dict[Future, RunSpec] = {}
    try:
        for run in todo:
            command = train_command(run, spec.base)
            futures[executor.submit(_execute, run, command, environment, pool)] = run
            if on_event:
                on_event("queued", run, None)
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            for future in done:
                _record(result, futures[future], future.result(), on_event)
    except (KeyboardInterrupt, _Interrupted):
        result.interrupted = True
        if in_main_thread:  # the stop is bounded (grace, then SIGKILL): no second interrupt
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        pool.stop_all()
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
        if in_main_thread:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            if previous_handler is not None:
                signal.signal(signal.SIGTERM, previous_handler)
    if result.interrupted:  # the runs that ended while the sweep stopped
        recorded = {*result.finished, *result.failed, *result.stopped}
        for future, run in futures.items():
            if future.done() and not future.cancelled() and run.name not in recorded:
                _record(result, run, future.result(), on_event)
    return result


def _record(
    result: SweepResult,
    run: RunSpec,
    outcome: Outcome,
    on_event: Callable[[str, RunSpec, str | None], None] | None,
) -> None:
    if outcome.state == "finished":
        result.finished.append(run.name)
    elif outcome.state == "failed":
        result.failed[run.name] = outcome.reason or "failed"
    else:
        result.stopped[run.name] = outcome.reason or "interrupted"
    if on_event:
        on_event(outcome.state, run, outcome.reason)


def _left_behind(run: RunSpec) -> bool:
    """Whether a run's live process was started by a sweep that is no longer alive."""
    marker = read_marker(run.directory)
    owner = marker.get("owner") or {}
    return bool(marker.get("alive")) and process_start(owner.get("pid", -1)) != owner.get("start")
