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
from matplotlib.lines import Line2D
from matplotlib.ticker import NullFormatter

from hyperp.reproduce.catalogue import threshold
from hyperp.rules import lr_schedule
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
# Reference lines on the stability panels: the bounds hyperp reproduce judges by
# (docs/method.md §5). Growth indicators: "bounded" when the largest model's last value is
# below this factor times the smallest's; outliers: an absolute share of elements.
GROWTH_INDICATORS = ("attn_z", "branch_rms")
_SECTIONS = ("model", "optim", "data", "train")


@dataclass
class RunCurves:
    path: Path
    records: list[dict[str, Any]]
    settings: dict[str, Any] = field(default_factory=dict)  # flat dotted config values
    label: str = ""
    plan: dict[str, Any] = field(default_factory=dict)  # config.json's plan (steps, lr, ...)

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

    def planned_lr(self) -> tuple[np.ndarray, np.ndarray]:
        """The whole planned LR schedule (steps 1..N) from the run's config, by the trainer's
        own rule (hyperp.rules.lr_schedule), scaled to the logged LR where there is one."""
        steps = self.plan.get("steps")
        if not isinstance(steps, int) or steps < 1 or not is_finite_number(self.plan.get("lr")):
            return np.empty(0), np.empty(0)
        optim = {k.removeprefix("optim."): v for k, v in self.settings.items() if "optim." in k}
        try:
            shape = [
                lr_schedule(
                    step,
                    steps,
                    warmup_steps=optim.get("warmup_steps", 0),
                    final_fraction=optim.get("final_lr_fraction", 0.1),
                    shape=optim.get("schedule", "linear"),
                    decay_fraction=optim.get("decay_fraction", 0.2),
                )
                for step in range(steps)
            ]
        except (ValueError, TypeError):
            return np.empty(0), np.empty(0)
        xs, ys = self.series("step", "lr")
        scale = float(self.plan["lr"])
        if xs.size and shape[int(xs[0]) - 1] > 0:  # the logged group's LR (AdamW scales some)
            scale = float(ys[0]) / shape[int(xs[0]) - 1]
        return np.arange(1, steps + 1, dtype=float), scale * np.asarray(shape)


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
            plan = values.get("plan")
            if isinstance(plan, dict):
                config["plan"] = plan  # not a setting: kept out of the swept keys below
        except (json.JSONDecodeError, AttributeError):
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
    for run, (_, values) in zip(runs, pairs):
        run.plan = values.pop("plan", {})
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
            if xs.size:  # circles, joined by a thin dashed line when there are several
                axes.plot(xs, ys, color=color, linestyle="--", linewidth=0.8, marker="o",
                          markersize=4, label=None if many else "validation")  # fmt: skip
        _plot_lr(lr_axes, run, color)
        for axes, key in zip(grid[1] if indicators else [], indicators):
            xs, ys = run.series("step", key)
            axes.plot(xs, ys, color=color, marker=".", linewidth=1.0)
    loss_step.set(xlabel="step", ylabel="loss", title="loss (line: train; circles: validation)")
    loss_tokens.set(xlabel="tokens", ylabel="loss", xscale="log", title="loss against tokens")
    loss_tokens.xaxis.set_minor_formatter(NullFormatter())  # minor labels overlap the major
    lr_axes.set(
        xlabel="step", ylabel="learning rate", title="LR schedule (dotted: planned; dot: now)"
    )
    for axes in grid[0]:
        axes.grid(True, alpha=0.3)
    if scale is None or not many:
        loss_step.legend(fontsize=7)
    else:
        norm, cmap, key = scale
        from matplotlib.cm import ScalarMappable

        figure.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=list(grid[0]), label=key)
    if many and any(run.has("val_loss") for run in runs):  # one key for every run's circles
        marker = Line2D([], [], color="0.4", linestyle="--", marker="o", markersize=4)
        loss_tokens.legend([marker], ["validation"], fontsize=7)
    for axes in grid[0][3:]:
        axes.set_visible(False)
    for axes, key in zip(grid[1] if indicators else [], indicators):
        axes.set(xlabel="step", title=INDICATORS.get(key, key))
        axes.grid(True, alpha=0.3)
        _reference_line(axes, key, runs)
    if indicators:
        for axes in grid[1][len(indicators) :]:
            axes.set_visible(False)
    figure.suptitle(title or (runs[0].path.name if not many else f"{len(runs)} runs"))
    return figure, runs


def _plot_lr(axes, run: RunCurves, color) -> None:
    """The planned schedule over the whole run (dotted), the logged LR (solid) and the
    current step (a dot on the last logged LR)."""
    xs, ys = run.planned_lr()
    if xs.size:
        axes.plot(xs, ys, color=color, linestyle=":", linewidth=1.0)
    xs, ys = run.series("step", "lr")
    if xs.size:
        axes.plot(xs, ys, color=color, linewidth=1.4)
        axes.plot(xs[-1:], ys[-1:], color=color, marker="o", markersize=5)


def _reference_line(axes, key: str, runs: list[RunCurves]) -> None:
    """The bound ``hyperp reproduce`` judges an indicator by, as a grey dashed line."""
    if key == "outlier_pct":
        level, text = threshold("outliers_pct"), f"bound {threshold('outliers_pct'):g}%"
    elif key in GROWTH_INDICATORS:
        last = [run.series("step", key)[1] for run in runs]
        last = [float(ys[-1]) for ys in last if ys.size]
        if not last:
            return
        factor = threshold("growth")
        level, text = factor * min(last), f"{factor:g}x the lowest run's last value"
    else:
        return
    axes.axhline(level, color="0.5", linestyle="--", linewidth=1.0, label=text)
    axes.legend(fontsize=7, loc="best")
