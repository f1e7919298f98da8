"""Training curves of one run or many (``hyperp plot``): loss against step and tokens, the LR
schedule, and the stability indicators when they were logged. Reads files only (no torch).

Runs of a sweep are coloured by the swept value: the overrides that differ between runs
(from each run's ``launch.json``, else from the differences of their ``config.json``), on a
sequential colour scale when one numeric setting was swept.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure

from hyperp.serve.metrics import is_finite_number, read_metrics

__all__ = ["INDICATORS", "RunCurves", "find_runs", "plot_runs"]

# Stability indicators of docs/method.md §5 as logged in metrics.jsonl (model-level aggregates).
INDICATORS = {
    "branch_rms": "branch output RMS",
    "outlier_pct": "activation outliers (%)",
    "attn_z": "attention Z",
    "router_z": "router Z",
    "maxvio": "MaxVio",
}
_SECTIONS = ("model", "optim", "data", "train")


@dataclass
class RunCurves:
    path: Path
    records: list[dict[str, Any]]
    settings: dict[str, Any] = field(default_factory=dict)  # flat dotted config values
    label: str = ""

    def series(self, x: str, y: str) -> tuple[np.ndarray, np.ndarray]:
        points = [
            (r[x], r[y])
            for r in self.records
            if is_finite_number(r.get(x)) and is_finite_number(r.get(y))
        ]
        if not points:
            return np.empty(0), np.empty(0)
        xs, ys = zip(*points)
        return np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)

    def has(self, key: str) -> bool:
        return any(is_finite_number(r.get(key)) for r in self.records)


def find_runs(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Run directories (those with ``metrics.jsonl``) given directly or found below sweep
    directories, in a stable order."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist; give run or sweep directories")
        if (path / "metrics.jsonl").is_file():
            found.append(path)
            continue
        below = sorted(p.parent for p in path.rglob("metrics.jsonl"))
        if not below:
            raise FileNotFoundError(
                f"{path} holds no runs (no metrics.jsonl in it or below it); give a run "
                "directory written by hyperp train, or a sweep directory"
            )
        found.extend(below)
    return list(dict.fromkeys(found))


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _settings(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the sweep's overrides for this run, its flat resolved config)."""
    overrides: dict[str, Any] = {}
    launch = run_dir / "launch.json"
    if launch.is_file():
        try:
            overrides = dict(json.loads(launch.read_text()).get("overrides") or {})
        except (json.JSONDecodeError, AttributeError):
            overrides = {}
    config: dict[str, Any] = {}
    config_path = run_dir / "config.json"
    if config_path.is_file():
        try:
            values = json.loads(config_path.read_text())
            config = _flatten({k: v for k, v in values.items() if k in _SECTIONS})
        except json.JSONDecodeError:
            config = {}
    return overrides, config


def _swept_keys(settings: list[dict[str, Any]]) -> list[str]:
    keys = sorted({key for values in settings for key in values})
    return [
        key
        for key in keys
        if len({json.dumps(values.get(key), sort_keys=True) for values in settings}) > 1
    ]


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def load_curves(paths: Sequence[str | os.PathLike[str]]) -> tuple[list[RunCurves], list[str]]:
    """Every run's records and its label; the swept keys (empty for one run)."""
    runs = [RunCurves(path, read_metrics(path)) for path in find_runs(paths)]
    pairs = [_settings(run.path) for run in runs]
    overrides = [o for o, _ in pairs]
    configs = [c for _, c in pairs]
    swept = _swept_keys(overrides) if any(overrides) else []
    source = overrides
    if not swept:
        swept, source = _swept_keys(configs), configs
    for run, values in zip(runs, source):
        run.settings = values
        parts = [f"{key.split('.')[-1]}={_format(values.get(key))}" for key in swept[:3]]
        run.label = ", ".join(parts) if parts and len(runs) > 1 else run.path.name
    return runs, swept


def _colors(runs: list[RunCurves], swept: list[str]) -> tuple[list[Any], Any]:
    """One colour per run, and a (mappable, key) for a colour bar when one numeric setting
    was swept (log scale when it spans more than a factor of 10)."""
    if len(swept) == 1:
        values = [run.settings.get(swept[0]) for run in runs]
        if all(is_finite_number(v) for v in values) and len(set(values)) > 1:
            low, high = min(values), max(values)
            norm = LogNorm(low, high) if low > 0 and high / low > 10 else Normalize(low, high)
            cmap = colormaps["viridis"]
            return [cmap(0.9 * norm(v)) for v in values], (norm, cmap, swept[0])
    return [f"C{i % 10}" for i in range(len(runs))], None


def plot_runs(
    paths: Sequence[str | os.PathLike[str]], *, title: str | None = None
) -> tuple[Figure, list[RunCurves]]:
    """The figure of ``hyperp plot``: loss against step and tokens (train solid, validation
    dashed with markers), the LR schedule, and a row of stability indicators when logged."""
    runs, swept = load_curves(paths)
    if not any(run.records for run in runs):
        raise ValueError("no metrics logged yet in " + ", ".join(str(r.path) for r in runs))
    indicators = [key for key in INDICATORS if any(run.has(key) for run in runs)]
    if not indicators and any(run.has("max_vio") for run in runs):
        indicators = ["max_vio"]
    rows = 2 if indicators else 1
    columns = max(3, len(indicators))
    figure = Figure(figsize=(4.6 * columns, 3.8 * rows), layout="constrained")
    grid = figure.subplots(rows, columns, squeeze=False)
    colors, scale = _colors(runs, swept)
    many = len(runs) > 1
    loss_step, loss_tokens, lr_axes = grid[0][0], grid[0][1], grid[0][2]
    for run, color in zip(runs, colors):
        label = run.label if many else "train"
        for axes, x in ((loss_step, "step"), (loss_tokens, "tokens")):
            xs, ys = run.series(x, "loss")
            axes.plot(xs, ys, color=color, linewidth=1.2, label=label)
            xs, ys = run.series(x, "val_loss")
            if xs.size:
                axes.plot(
                    xs,
                    ys,
                    color=color,
                    linestyle="--",
                    marker="o",
                    markersize=3,
                    label=None if many else "validation",
                )
        xs, ys = run.series("step", "lr")
        lr_axes.plot(xs, ys, color=color, linewidth=1.2)
        for axes, key in zip(grid[1] if indicators else [], indicators):
            xs, ys = run.series("step", key)
            axes.plot(xs, ys, color=color, marker=".", linewidth=1.0)
    loss_step.set(xlabel="step", ylabel="loss", title="loss (dashed: validation)")
    loss_tokens.set(xlabel="tokens", ylabel="loss", xscale="log", title="loss against tokens")
    lr_axes.set(xlabel="step", ylabel="learning rate", title="LR schedule")
    for axes in grid[0]:
        axes.grid(True, alpha=0.3)
    if scale is None or not many:
        loss_step.legend(fontsize=7)
    else:
        norm, cmap, key = scale
        from matplotlib.cm import ScalarMappable

        figure.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=list(grid[0]), label=key)
    for axes in grid[0][3:]:
        axes.set_visible(False)
    for axes, key in zip(grid[1] if indicators else [], indicators):
        axes.set(xlabel="step", title=INDICATORS.get(key, key))
        axes.grid(True, alpha=0.3)
    if indicators:
        for axes in grid[1][len(indicators) :]:
            axes.set_visible(False)
    figure.suptitle(title or (runs[0].path.name if not many else f"{len(runs)} runs"))
    return figure, runs
