"""Sweep files: a base config plus axes, expanded into runs; the ``[launcher]`` table.

The format is described in :mod:`hyperp.sweep`. This module owns reading a sweep file (or the
``sweep.json`` a sweep directory keeps), run names, and the ``hyperp train`` command of a run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import os
import re
import shlex
import sys
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hyperp.fileio import atomic_write_json

__all__ = [
    "LAUNCHERS",
    "RunSpec",
    "SlurmOptions",
    "SweepSpec",
    "command_from_prefix",
    "default_train_command",
    "describe_plan",
    "expand",
    "load_sweep",
    "plan_run",
    "run_name",
    "train_arguments",
    "write_sweep_record",
]

_TOP_LEVEL_KEYS = {
    "base",
    "out",
    "name",
    "workers",
    "threads_per_worker",
    "set",
    "axes",
    "launcher",
}
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9.+\-]+")
LAUNCHERS = ("local", "slurm")


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: its name, directory, overrides (dotted key -> value) and processes."""

    name: str
    directory: Path
    overrides: dict[str, Any]
    axis_values: dict[str, Any]
    nproc: int = 1


@dataclass(frozen=True)
class SlurmOptions:
    """The ``[launcher]`` table's SLURM settings (sbatch options, see docs/cluster.md)."""

    partition: str | None = None
    nodes: int = 1
    gpus_per_node: int = 0  # 0: request no GPUs (CPU runs)
    cpus_per_task: int | None = None  # one task per node: all the CPUs its ranks use
    mem: str | None = None  # sbatch --mem, e.g. "64G"
    time: int = 60  # minutes per job; a run that needs longer is checkpointed and requeued
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    array_parallelism: int = 256  # array tasks running at once
    sbatch: tuple[str, ...] = ()  # extra sbatch options, e.g. "--exclusive", "--reservation=x"
    setup: tuple[str, ...] = ()  # shell lines run before each job (module load ..., source ...)
    signal_delay_s: int = 120  # the warning signal comes this long before the time limit
    max_timeouts: int = 20  # time-limit requeues allowed per run

    def to_dict(self) -> dict[str, Any]:
        """The settings given (None: unset), as the ``[launcher]`` table would hold them."""
        return {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in vars(self).items()
            if value is not None
        }


@dataclass
class SweepSpec:
    path: Path | None
    base: Path
    out: Path
    settings: dict[str, Any] = field(default_factory=dict)
    axes: dict[str, list[Any]] = field(default_factory=dict)
    workers: int = 1
    threads_per_worker: int | None = None
    launcher: str = "local"  # the default launcher: local | slurm (CLI --launcher overrides)
    slurm: SlurmOptions = field(default_factory=SlurmOptions)


_STRING_OPTIONS = ("partition", "mem", "account", "qos", "constraint")
_COUNT_OPTIONS = ("nodes", "cpus_per_task", "array_parallelism", "signal_delay_s", "max_timeouts")
_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def _minutes(text: str) -> int:
    """SLURM's time formats (MM, HH:MM:SS, D-HH[:MM[:SS]]) in whole minutes, rounded up."""
    match = _TIME.match(text.strip())
    if not match:
        raise ValueError
    days, first, second, third = (int(v) if v else None for v in match.groups())
    if days is None and second is None:
        return first  # plain minutes
    if days is not None:
        hours, minutes, seconds = first, second or 0, third or 0
    elif third is None:
        hours, minutes, seconds = 0, first, second  # MM:SS
    else:
        hours, minutes, seconds = first, second, third
    return (days or 0) * 1440 + hours * 60 + minutes + (1 if seconds else 0)


def _launcher_table(table: Any, where: str) -> tuple[str, SlurmOptions]:
    """Validate the ``[launcher]`` table: ``kind`` plus the SLURM settings."""
    if not isinstance(table, dict):
        raise ValueError(f'{where}: launcher must be a table ([launcher] with kind = "slurm", ...)')
    fields = {f.name for f in dataclasses.fields(SlurmOptions)}
    unknown = set(table) - fields - {"kind"}
    if unknown:
        raise ValueError(
            f"{where}: unknown [launcher] key(s) {', '.join(sorted(unknown))}; allowed: kind, "
            f"{', '.join(sorted(fields))}"
        )
    kind = table.get("kind", "local")
    if kind not in LAUNCHERS:
        raise ValueError(f"{where}: [launcher] kind must be one of {', '.join(LAUNCHERS)}")
    values = {
        key: _launcher_value(key, value, where) for key, value in table.items() if key != "kind"
    }
    return kind, SlurmOptions(**values)


def _launcher_value(key: str, value: Any, where: str) -> Any:
    """One ``[launcher]`` setting, checked, in the form SlurmOptions holds it."""
    for text in value if isinstance(value, list) else [value]:
        if isinstance(text, str) and {"\n", "\r", "\0"} & set(text):
            raise ValueError(
                f"{where}: [launcher] {key} holds a line break or NUL character ({text!r}); "
                "each setting becomes one line of the job script, so write it on one line"
            )
    if key in _STRING_OPTIONS:
        if key == "mem" and isinstance(value, int) and not isinstance(value, bool):
            value = f"{value}M"  # sbatch reads a bare number as megabytes
        if not isinstance(value, str) or not value:
            raise ValueError(f"{where}: [launcher] {key} must be a non-empty string")
    elif key in _COUNT_OPTIONS or key == "gpus_per_node":
        low = 0 if key == "gpus_per_node" else 1
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{where}: [launcher] {key} must be an integer >= {low}")
    elif key == "time":
        try:
            value = value if isinstance(value, int) else _minutes(str(value))
        except ValueError:
            value = 0
        if isinstance(value, bool) or value < 1:
            raise ValueError(
                f"{where}: [launcher] time must be minutes (an integer) or SLURM's "
                '"HH:MM:SS" / "D-HH:MM:SS", at least one minute'
            )
    else:  # sbatch, setup: lists of strings (one string is a list of one)
        value = [value] if isinstance(value, str) else value
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{where}: [launcher] {key} must be a list of strings")
        if key == "sbatch":
            for option in value:
                sbatch_option(option, where)
        value = tuple(value)
    return value


def sbatch_option(text: str, where: str = "sweep") -> tuple[str, str | bool]:
    """``"--key=value"`` or ``"--flag"`` (an ``#SBATCH`` prefix is allowed) -> (key, value)."""
    option = text.strip().removeprefix("#SBATCH").strip()
    if not option.startswith("--") or " " in option.split("=", 1)[0]:
        raise ValueError(
            f'{where}: [launcher] sbatch entries are long options such as "--exclusive" or '
            f'"--reservation=NAME"; got {text!r}'
        )
    key, has_value, value = option[2:].partition("=")
    return key, (value if has_value else True)


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
    _check_overrides(settings, axes, sweep_path)
    launcher, slurm = _launcher_table(data.get("launcher", {}), str(sweep_path))
    return SweepSpec(
        path=sweep_path.resolve(),
        base=base,
        out=out_dir.resolve(),
        settings=settings,
        axes=axes,
        workers=workers,
        threads_per_worker=threads,
        launcher=launcher,
        slurm=slurm,
    )


def _check_overrides(settings: dict[str, Any], axes: dict[str, list], sweep_path: Path) -> None:
    """Every key and value through the trainer's one typed parser, before any run starts: a
    typo would otherwise fail every run of the sweep one by one."""
    from hyperp.train.config import parse_overrides  # torch-free

    try:
        parse_overrides(settings, typed=True)  # TOML is typed: "30" is not an integer
        for key, values in axes.items():
            for value in values:
                parse_overrides({key: value}, typed=True)
    except ValueError as error:
        raise ValueError(f"{sweep_path}: {error}") from None


def _resolve_base(here: Path, name: str, sweep_path: Path) -> Path:
    """A TOML path relative to the sweep file, or a preset name shipped in hyperp/configs."""
    candidate = (here / name).resolve()
    if candidate.is_file():
        return candidate
    preset = Path(__file__).resolve().parents[1] / "configs" / f"{name}.toml"
    if Path(name).suffix == "" and preset.is_file():
        return preset
    raise FileNotFoundError(
        f"{sweep_path}: base config {candidate} does not exist (give a TOML path relative to "
        "the sweep file, or a preset name such as tiny)"
    )


def _load_written_sweep(directory: Path, out: str | os.PathLike[str] | None) -> SweepSpec:
    record = directory / "sweep.json"
    try:
        data = json.loads(record.read_text())
        launcher, slurm = _launcher_table(data.get("launcher", {}), str(record))
        return SweepSpec(
            path=Path(data["sweep_file"]) if data.get("sweep_file") else None,
            base=Path(data["base"]),
            out=Path(out).resolve() if out is not None else directory.resolve(),
            settings=dict(data["settings"]),
            axes={key: list(values) for key, values in data["axes"].items()},
            workers=int(data.get("workers", 1)),
            threads_per_worker=data.get("threads_per_worker"),
            launcher=launcher,
            slurm=slurm,
        )
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(
            f"{directory / 'sweep.json'} is damaged ({error}); give the sweep file instead"
        ) from error


def write_sweep_record(spec: SweepSpec, runs: Sequence[RunSpec]) -> None:
    """``OUT/sweep.json``: what ``load_sweep(OUT)`` reads back, so the directory alone is enough
    for ``hyperp sweep status``, ``cancel`` and a rerun."""
    spec.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        spec.out / "sweep.json",
        {
            "sweep_file": str(spec.path) if spec.path else None,
            "base": str(spec.base),
            "settings": spec.settings,
            "axes": spec.axes,
            "workers": spec.workers,
            "threads_per_worker": spec.threads_per_worker,
            "launcher": {"kind": spec.launcher, **spec.slurm.to_dict()},
            "runs": [{"name": r.name, "overrides": r.overrides, "nproc": r.nproc} for r in runs],
        },
    )


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


def plan_run(run: RunSpec, base: Path) -> dict[str, Any] | str:
    """The run's ``lr``, ``tokens``, ``steps``, ``flops`` and ``params`` from the trainer's config
    (``hyperp.train.config``), or a message saying why they are not available."""
    try:
        from hyperp.data import data_vocab_size
        from hyperp.train.config import load_config
    except ImportError:
        return "hyperp.train is not available in this installation"
    try:
        config = load_config(base, dict(run.overrides))
        plan = config.resolve(data_vocab_size(config)).plan()
    except (ValueError, FileNotFoundError, KeyError, TypeError) as error:
        return f"config error: {error}"
    values = plan.to_dict() if hasattr(plan, "to_dict") else dict(plan)
    return {key: values.get(key) for key in ("lr", "tokens", "steps", "flops", "params")}


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
