"""Sweeps: a base config plus axes, expanded into runs and executed by a local worker pool.

A sweep file (TOML)::

    base = "base.toml"            # the base training config (relative to this file) or a
                                  # preset name from hyperp/configs (tiny, d8_dense, d8_moe)
    out = "runs/lr-width"         # sweep directory (default: runs/<file stem> beside this file)
    workers = 2                   # runs in parallel (CLI --workers overrides)
    threads_per_worker = 1        # OMP/MKL threads per run (default: CPUs / workers)

    [set]                         # overrides applied to every run
    "train.steps" = 40

    [axes]                        # the grid: every combination of these values is one run
    "optim.lr" = [0.005, 0.01, 0.02]
    "model.width" = [32, 64]
    # "optim.base_lr" = { log_range = [1e-3, 1e-1], points = 5 }   (geometric spacing)

Keys are the trainer's dotted config keys (``section.key``), written quoted or as nested tables.
Under HyperP the LR axis can be the base LR: each run's peak LR is then derived by the transfer
rules inside the trainer, so sweeps at different scales line up when transfer works.

Every run is an ordinary ``hyperp train`` run directory ``OUT/<name>``, where the name is made
from the run's axis values (deterministic, so a re-run finds its finished runs). A run is
finished when its ``summary.json`` exists and is never redone; a failed run gets ``error.txt``
and the sweep goes on; an interrupted sweep resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hyperp.fileio import atomic_write_text

__all__ = [
    "RunSpec",
    "RunStatus",
    "SweepSpec",
    "default_train_command",
    "expand",
    "load_sweep",
    "plan_run",
    "run_sweep",
    "sweep_status",
]

_TOP_LEVEL_KEYS = {"base", "out", "name", "workers", "threads_per_worker", "set", "axes"}
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9.+\-]+")
# Characters of the launcher's output kept in error.txt when a run fails without writing one.
_ERROR_TAIL_LINES = 20


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: its name, directory, overrides (dotted key -> value) and processes."""

    name: str
    directory: Path
    overrides: dict[str, Any]
    axis_values: dict[str, Any]
    nproc: int = 1


@dataclass
class SweepSpec:
    path: Path | None
    base: Path
    out: Path
    settings: dict[str, Any] = field(default_factory=dict)
    axes: dict[str, list[Any]] = field(default_factory=dict)
    workers: int = 1
    threads_per_worker: int | None = None


def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested TOML tables -> dotted keys; an axis given as {log_range=..., points=...} is a leaf."""
    flat: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and not ({"log_range", "points"} & set(value)):
            flat.update(_flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def _round_sig(value: float, digits: int = 6) -> float:
    return float(f"{value:.{digits}g}")


def _axis_values(key: str, spec: Any) -> list[Any]:
    if isinstance(spec, list):
        if not spec:
            raise ValueError(f"axis {key!r} has no values; give at least one")
        return list(spec)
    if isinstance(spec, dict):
        unknown = set(spec) - {"log_range", "points"}
        if unknown or "log_range" not in spec or "points" not in spec:
            raise ValueError(
                f"axis {key!r}: a range is written {{ log_range = [low, high], points = n }}"
                + (f" (unknown keys: {', '.join(sorted(unknown))})" if unknown else "")
            )
        bounds, points = spec["log_range"], spec["points"]
        if (
            not isinstance(bounds, list)
            or len(bounds) != 2
            or not all(isinstance(v, int | float) and v > 0 for v in bounds)
        ):
            raise ValueError(f"axis {key!r}: log_range must be two positive numbers [low, high]")
        if not isinstance(points, int) or points < 1:
            raise ValueError(f"axis {key!r}: points must be a positive integer")
        low, high = (float(v) for v in bounds)
        if points == 1:
            return [_round_sig(low)]
        ratio = (high / low) ** (1.0 / (points - 1))
        # Rounded to 6 significant digits so names and the values passed to runs agree.
        return [_round_sig(low * ratio**i) for i in range(points)]
    return [spec]  # a single value


def load_sweep(
    path: str | os.PathLike[str], *, out: str | os.PathLike[str] | None = None
) -> SweepSpec:
    """Read a sweep file (paths inside it are relative to the file's directory), or a sweep
    directory that a previous run wrote (its ``sweep.json``)."""
    sweep_path = Path(path)
    if sweep_path.is_dir() and (sweep_path / "sweep.json").is_file():
        return _load_written_sweep(sweep_path, out)
    if not sweep_path.is_file():
        raise FileNotFoundError(f"sweep file {sweep_path} does not exist")
    try:
        data = tomllib.loads(sweep_path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"{sweep_path} is not valid TOML: {error}") from error
    unknown = set(data) - _TOP_LEVEL_KEYS
    if unknown:
        raise ValueError(
            f"{sweep_path}: unknown key(s) {', '.join(sorted(unknown))}; allowed: "
            f"{', '.join(sorted(_TOP_LEVEL_KEYS))} (put config overrides under [set] or [axes])"
        )
    if "base" not in data:
        raise ValueError(f'{sweep_path}: name the base training config with base = "FILE.toml"')
    here = sweep_path.parent
    base = _resolve_base(here, str(data["base"]), sweep_path)
    if out is not None:
        out_dir = Path(out)
    elif "out" in data:
        out_dir = here / data["out"]
    else:
        out_dir = here / "runs" / sweep_path.stem
    axes = {key: _axis_values(key, value) for key, value in _flatten(data.get("axes", {})).items()}
    settings = _flatten(data.get("set", {}))
    overlap = set(axes) & set(settings)
    if overlap:
        raise ValueError(
            f"{sweep_path}: {', '.join(sorted(overlap))} is both in [set] and in [axes]; keep one"
        )
    workers = data.get("workers", 1)
    threads = data.get("threads_per_worker")
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"{sweep_path}: workers must be a positive integer")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ValueError(f"{sweep_path}: threads_per_worker must be a positive integer")
    return SweepSpec(
        path=sweep_path.resolve(),
        base=base,
        out=out_dir.resolve(),
        settings=settings,
        axes=axes,
        workers=workers,
        threads_per_worker=threads,
    )


def _resolve_base(here: Path, name: str, sweep_path: Path) -> Path:
    """A TOML path relative to the sweep file, or a preset name shipped in hyperp/configs."""
    candidate = (here / name).resolve()
    if candidate.is_file():
        return candidate
    preset = Path(__file__).resolve().parent / "configs" / f"{name}.toml"
    if Path(name).suffix == "" and preset.is_file():
        return preset
    raise FileNotFoundError(
        f"{sweep_path}: base config {candidate} does not exist (give a TOML path relative to "
        "the sweep file, or a preset name such as tiny)"
    )


def _load_written_sweep(directory: Path, out: str | os.PathLike[str] | None) -> SweepSpec:
    try:
        data = json.loads((directory / "sweep.json").read_text())
        return SweepSpec(
            path=Path(data["sweep_file"]) if data.get("sweep_file") else None,
            base=Path(data["base"]),
            out=Path(out).resolve() if out is not None else directory.resolve(),
            settings=dict(data["settings"]),
            axes={key: list(values) for key, values in data["axes"].items()},
            workers=int(data.get("workers", 1)),
            threads_per_worker=data.get("threads_per_worker"),
        )
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(
            f"{directory / 'sweep.json'} is damaged ({error}); give the sweep file instead"
        ) from error


def _format_value(value: Any, *, short: bool = False) -> str:
    """A value as text: on the command line exactly (``repr`` round-trips a float), in a run
    name with 6 significant digits (name collisions are resolved in ``expand``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}" if short else repr(value)
    if isinstance(value, list | dict):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _short_keys(keys: Sequence[str]) -> dict[str, str]:
    """The last dotted component of each key, unless two axes share it (then the full key)."""
    last = [key.rsplit(".", 1)[-1] for key in keys]
    return {key: short if last.count(short) == 1 else key for key, short in zip(keys, last)}


def run_name(axis_values: dict[str, Any]) -> str:
    """Deterministic directory name from a run's axis values, e.g. ``lr=0.01_width=64``."""
    if not axis_values:
        return "run"
    short = _short_keys(list(axis_values))
    parts = [
        f"{short[key]}={_NAME_UNSAFE.sub('-', _format_value(value, short=True)).strip('-')}"
        for key, value in axis_values.items()
    ]
    return "_".join(parts)


def _base_nproc(base: Path) -> int:
    try:
        data = tomllib.loads(base.read_text())
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return 1  # not TOML (e.g. JSON): the trainer will complain if it is broken
    value = data.get("train", {}).get("nproc", 1) if isinstance(data.get("train"), dict) else 1
    return value if isinstance(value, int) and value >= 1 else 1


def expand(spec: SweepSpec) -> list[RunSpec]:
    """Every combination of the axes, in the order the axes and their values are written."""
    keys = list(spec.axes)
    base_nproc = _base_nproc(spec.base)
    runs = []
    names: dict[str, dict[str, Any]] = {}
    for combination in itertools.product(*(spec.axes[key] for key in keys)):
        axis_values = dict(zip(keys, combination))
        overrides = {**spec.settings, **axis_values}
        name = run_name(axis_values)
        if name in names and names[name] != axis_values:
            # Values equal after formatting (e.g. 0.0100000001 and 0.01): keep names unique.
            digest = hashlib.sha1(json.dumps(axis_values, sort_keys=True).encode()).hexdigest()
            name = f"{name}_{digest[:8]}"
        if name in names:
            raise ValueError(f"the sweep lists the same run twice ({name}); remove the duplicate")
        names[name] = axis_values
        nproc = overrides.get("train.nproc", base_nproc)
        if not isinstance(nproc, int) or nproc < 1:
            raise ValueError(f"train.nproc must be a positive integer, got {nproc!r} in {name}")
        runs.append(
            RunSpec(
                name=name,
                directory=spec.out / name,
                overrides=overrides,
                axis_values=axis_values,
                nproc=nproc,
            )
        )
    return runs


def default_train_command(run: RunSpec, base: Path) -> list[str]:
    """``python -m hyperp train ...``, or ``torchrun`` with one process per rank when nproc > 1."""
    if run.nproc > 1:
        launcher = ["torchrun", "--standalone", "--nproc-per-node", str(run.nproc), "-m"]
    else:
        launcher = [sys.executable, "-m"]
    return [*launcher, "hyperp", "train", *train_arguments(run, base)]


def train_arguments(run: RunSpec, base: Path) -> list[str]:
    arguments = ["--config", str(base), "--out", str(run.directory)]
    for key, value in run.overrides.items():
        arguments += [f"--{key}", _format_value(value)]
    return arguments


def command_from_prefix(prefix: str | Sequence[str]) -> Callable[[RunSpec, Path], list[str]]:
    """A launcher that runs ``PREFIX --config BASE --out DIR --key value ...`` (for custom trainers,
    cluster wrappers, or tests)."""
    words = shlex.split(prefix) if isinstance(prefix, str) else list(prefix)
    if not words:
        raise ValueError("the train command is empty")
    return lambda run, base: [*words, *train_arguments(run, base)]


# --------------------------------------------------------------------------------------------
# Status
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunStatus:
    name: str
    state: str  # finished | failed | running | interrupted | pending
    error: str | None = None


def _error_summary(path: Path) -> str:
    """The last non-empty line of an ``error.txt`` (where a traceback names the exception)."""
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else "failed (empty error.txt)"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_status(run: RunSpec) -> RunStatus:
    directory = run.directory
    if (directory / "summary.json").exists():
        return RunStatus(run.name, "finished")
    error_path = directory / "error.txt"
    if error_path.exists():
        return RunStatus(run.name, "failed", _error_summary(error_path))
    marker = directory / ".running"
    if marker.exists():
        try:
            pid = int(json.loads(marker.read_text())["pid"])
        except (ValueError, KeyError, json.JSONDecodeError):
            pid = -1
        state = "running" if pid > 0 and _pid_alive(pid) else "interrupted"
        return RunStatus(run.name, state)
    return RunStatus(run.name, "pending")


def sweep_status(spec: SweepSpec) -> list[RunStatus]:
    return [run_status(run) for run in expand(spec)]


# --------------------------------------------------------------------------------------------
# Planning (dry run)
# --------------------------------------------------------------------------------------------


def plan_run(run: RunSpec, base: Path) -> dict[str, Any] | str:
    """The run's ``lr``, ``tokens``, ``steps``, ``flops`` and ``params`` from the trainer's config
    (``hyperp.train.config``), or a message saying why they are not available."""
    try:
        from hyperp.train.config import load_config
        from hyperp.train.trainer import data_vocab_size
    except ImportError:
        return "hyperp.train is not available in this installation"
    try:
        config = load_config(base, dict(run.overrides))
        plan = config.resolve(data_vocab_size(config)).plan()
    except (ValueError, FileNotFoundError, KeyError, TypeError) as error:
        return f"config error: {error}"
    values = plan.to_dict() if hasattr(plan, "to_dict") else dict(plan)
    return {key: values.get(key) for key in ("lr", "tokens", "steps", "flops", "params")}


# --------------------------------------------------------------------------------------------
# Execution
# --------------------------------------------------------------------------------------------


class _Interrupted(Exception):
    pass


@dataclass
class SweepResult:
    finished: list[str] = field(default_factory=list)  # run here, finished now
    skipped: list[str] = field(default_factory=list)  # finished before (or failed, not retried)
    failed: dict[str, str] = field(default_factory=dict)  # name -> error
    interrupted: bool = False


class _Pool:
    """Tracks live child processes so an interrupt can stop them all (process groups)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.processes: set[subprocess.Popen] = set()
        self.stopping = threading.Event()

    def terminate_all(self, grace_s: float = 10.0) -> None:
        with self.lock:
            self.stopping.set()
            live = list(self.processes)
        for process in live:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for process in live:
            try:
                process.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)


def _execute(
    run: RunSpec,
    command: list[str],
    environment: dict[str, str],
    pool: _Pool,
) -> tuple[str, str | None]:
    """Run one training process; returns (state, error)."""
    directory = run.directory
    directory.mkdir(parents=True, exist_ok=True)
    error_path = directory / "error.txt"
    if error_path.exists():
        error_path.unlink()  # a retried run starts clean
    atomic_write_text(
        directory / "launch.json",
        json.dumps({"command": command, "overrides": run.overrides, "nproc": run.nproc}, indent=2),
    )
    log_path = directory / "train.log"
    with log_path.open("ab") as log:
        log.write(f"$ {shlex.join(command)}\n".encode())
        log.flush()
        # Start and register under the pool's lock, so an interrupt either sees this process
        # (and stops it) or stops us from starting it.
        with pool.lock:
            if pool.stopping.is_set():
                return "interrupted", None
            try:
                # A new session, so an interrupt can signal the whole tree (torchrun's ranks too).
                process = subprocess.Popen(
                    command,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=environment,
                    start_new_session=True,
                )
            except OSError as error:
                message = f"could not start {command[0]!r}: {error}"
                atomic_write_text(error_path, message + "\n")
                return "failed", message
            pool.processes.add(process)
        atomic_write_text(directory / ".running", json.dumps({"pid": process.pid}))
        return_code = process.wait()
        with pool.lock:
            pool.processes.discard(process)
    if pool.stopping.is_set() and not (directory / "summary.json").exists():
        return "interrupted", None
    (directory / ".running").unlink(missing_ok=True)
    if return_code == 0 and (directory / "summary.json").exists():
        return "finished", None
    if error_path.exists():  # the trainer explained itself
        return "failed", _error_summary(error_path)
    tail = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    tail = tail[-_ERROR_TAIL_LINES:]
    reason = (
        f"exit status {return_code}"
        if return_code != 0
        else "the trainer exited without writing summary.json"
    )
    # The last line summarises (a traceback's last line names the exception), as readers expect.
    last = tail[-1].strip() if len(tail) > 1 else ""
    atomic_write_text(
        error_path,
        "\n".join(
            ["--- last lines of train.log ---", *tail, f"{reason}: {last}" if last else reason]
        )
        + "\n",
    )
    return "failed", _error_summary(error_path)


def run_sweep(
    spec: SweepSpec,
    *,
    workers: int | None = None,
    threads_per_worker: int | None = None,
    retry_failed: bool = False,
    train_command: Callable[[RunSpec, Path], list[str]] = default_train_command,
    on_event: Callable[[str, RunSpec, str | None], None] | None = None,
) -> SweepResult:
    """Execute every run of the sweep that is not finished (nor failed, unless ``retry_failed``).

    Runs go to a pool of ``workers`` threads, each driving one training process at a time with
    ``threads_per_worker`` OMP/MKL threads. SIGINT/SIGTERM stop the children and return with
    ``interrupted`` set; the next call resumes.
    """
    workers = workers or spec.workers
    if workers < 1:
        raise ValueError("workers must be at least 1")
    threads = (
        threads_per_worker or spec.threads_per_worker or max(1, (os.cpu_count() or 1) // workers)
    )
    runs = expand(spec)
    spec.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        spec.out / "sweep.json",
        json.dumps(
            {
                "sweep_file": str(spec.path) if spec.path else None,
                "base": str(spec.base),
                "settings": spec.settings,
                "axes": spec.axes,
                "workers": spec.workers,
                "threads_per_worker": spec.threads_per_worker,
                "runs": [
                    {"name": r.name, "overrides": r.overrides, "nproc": r.nproc} for r in runs
                ],
            },
            indent=2,
        )
        + "\n",
    )
    result = SweepResult()
    todo = []
    for run in runs:
        status = run_status(run)
        # A run whose process is still alive (left by a sweep killed with SIGKILL) is not
        # started a second time into the same directory.
        if status.state in ("finished", "running") or (
            status.state == "failed" and not retry_failed
        ):
            result.skipped.append(run.name)
            if on_event:
                on_event(f"skip ({status.state})", run, status.error)
        else:
            todo.append(run)
    environment = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
    }
    pool = _Pool()

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
            futures[
                executor.submit(_execute, run, train_command(run, spec.base), environment, pool)
            ] = run
            if on_event:
                on_event("queued", run, None)
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            for future in done:
                run = futures[future]
                state, error = future.result()
                if state == "finished":
                    result.finished.append(run.name)
                elif state == "failed":
                    result.failed[run.name] = error or "failed"
                if on_event:
                    on_event(state, run, error)
    except (KeyboardInterrupt, _Interrupted):
        result.interrupted = True
        for future in futures:
            future.cancel()
        pool.terminate_all()
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
        if in_main_thread and previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
    return result


def describe_plan(value: dict[str, Any] | str) -> str:
    if isinstance(value, str):
        return value
    parts = []
    for key in ("lr", "tokens", "steps", "flops", "params"):
        if key in value and value[key] is not None:
            number = value[key]
            parts.append(
                f"{key}={number:.4g}"
                if isinstance(number, float) and math.isfinite(number)
                else f"{key}={number}"
            )
    return ", ".join(parts)
