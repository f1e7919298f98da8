"""Plots of a study, in the style of the paper's figures (METHOD.md 6).

Figures are built with ``matplotlib.figure.Figure`` directly (the Agg canvas, no pyplot state),
so they work headless and in threads, and tests can inspect the returned objects.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from hyperp.analysis.study import (
    ComputeResult,
    GroupResult,
    LeverageResult,
    PowerLawResult,
    format_key,
)
from hyperp.fileio import atomic_write_bytes

__all__ = [
    "plot_leverage",
    "plot_loss_vs_compute",
    "plot_lr_sweeps",
    "plot_power_laws",
    "save_figure",
]

_X_LABELS = {"lr": "learning rate", "base_lr": "base learning rate"}
_AXIS_LABELS = {
    "tokens": "training tokens",
    "batch_tokens": "batch size (tokens)",
    "depth": "depth",
    "width": "width",
}


def _nice(name: str) -> str:
    return _X_LABELS.get(name) or _AXIS_LABELS.get(name) or name.replace("_", " ")


def save_figure(figure: Figure, path: str | os.PathLike[str], *, dpi: int = 120) -> None:
    """Render ``figure`` as PNG and write it atomically."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())


def _family_of(group: GroupResult, scale_axis: str) -> str:
    return format_key({k: v for k, v in group.key.items() if k != scale_axis}) or "all runs"


def plot_lr_sweeps(
    groups: Sequence[GroupResult], *, x: str = "lr", y: str = "val_loss", scale_axis: str = "tokens"
) -> Figure:
    """Loss against LR, one panel per family (group minus the scale axis), one colour per group:
    the points, the fitted parabola, and the optimum with its bootstrap interval."""
    families: dict[str, list[GroupResult]] = {}
    for group in groups:
        families.setdefault(_family_of(group, scale_axis), []).append(group)
    panels = max(len(families), 1)
    columns = min(panels, 3)
    rows = math.ceil(panels / columns)
    figure = Figure(figsize=(5.2 * columns, 4.0 * rows))
    axes_list = figure.subplots(rows, columns, squeeze=False).ravel()
    for axes, (family, members) in zip(axes_list, families.items()):
        colors = [f"C{i % 10}" for i in range(len(members))]
        for color, group in zip(colors, members):
            label = format_key({k: v for k, v in group.key.items() if k == scale_axis})
            label = label or group.label or "runs"
            finite = np.isfinite(group.y)
            axes.scatter(group.x[finite], group.y[finite], color=color, s=18, label=label)
            optimum = group.optimum
            if optimum is None:
                continue
            lo, hi = optimum.lr_range
            grid = np.exp(np.linspace(np.log(lo), np.log(hi), 100))
            axes.plot(grid, optimum.curve(grid), color=color, linewidth=1.2)
            if optimum.inside:
                interval = optimum.lr_interval
                error = None
                if all(math.isfinite(v) for v in interval):
                    error = [
                        [max(optimum.lr - interval[0], 0.0)],
                        [max(interval[1] - optimum.lr, 0.0)],
                    ]
                axes.errorbar(
                    [optimum.lr],
                    [optimum.loss],
                    xerr=error,
                    color=color,
                    marker="*",
                    markersize=11,
                    capsize=3,
                    linestyle="none",
                )
            else:
                # No optimum: mark the best observed point with an open marker.
                axes.plot(
                    [optimum.best_lr],
                    [optimum.best_loss],
                    marker="o",
                    markersize=10,
                    markerfacecolor="none",
                    color=color,
                    linestyle="none",
                )
        axes.set_xscale("log")
        axes.set_xlabel(_nice(x))
        axes.set_ylabel(_nice(y))
        axes.set_title(family, fontsize=10)
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize=8)
    for axes in axes_list[len(families) :]:
        axes.set_visible(False)
    figure.suptitle("Loss against learning rate (stars: fitted optima, open circles: no optimum)")
    return figure


def plot_power_laws(laws: Sequence[PowerLawResult], *, x: str = "lr") -> Figure:
    """Optimum LR against the scale axis on log-log axes, with both fits and the target."""
    figure = Figure(figsize=(6.0, 4.5))
    axes = figure.subplots()
    axis_name = laws[0].axis if laws else "scale"
    for index, law in enumerate(laws):
        fit = law.fit
        if fit is None:
            continue
        color = f"C{index % 10}"
        lower = [max(fit.y[i] - lo, 0.0) for i, (lo, _) in enumerate(law.lr_intervals)]
        upper = [max(hi - fit.y[i], 0.0) for i, (_, hi) in enumerate(law.lr_intervals)]
        error = np.array([lower, upper]) if law.lr_intervals else None
        if error is not None and not np.all(np.isfinite(error)):
            error = None
        axes.errorbar(fit.x, fit.y, yerr=error, color=color, marker="o", linestyle="none")
        span = [fit.x.min(), fit.x.max()]
        if law.target is not None and law.target > 0:
            span = [min(span[0], law.target), max(span[1], law.target)]
        grid = np.exp(np.linspace(np.log(span[0]), np.log(span[1]), 100))
        axes.plot(
            grid,
            fit.predict(grid),
            color=color,
            label=f"{law.label}: {fit.coefficient:.3g}·x^{fit.exponent:.3f} (linear-space NLS)",
        )
        axes.plot(
            grid,
            fit.predict_loglog(grid),
            color=color,
            linestyle="--",
            linewidth=0.9,
            label=f"log-log LS exponent {fit.loglog_exponent:.3f}",
        )
        if law.target is not None and law.target > 0:
            axes.plot(
                [law.target], [fit.predict(law.target)], marker="X", color=color, markersize=9
            )
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel(_nice(axis_name))
    axes.set_ylabel(f"optimal {_nice(x)}")
    axes.set_title(f"Optimal {_nice(x)} against {_nice(axis_name)}")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    return figure


def plot_loss_vs_compute(compute: Sequence[ComputeResult], *, y: str = "val_loss") -> Figure:
    """Loss against training FLOPs per method, with the preferred fitted curve."""
    figure = Figure(figsize=(6.0, 4.5))
    axes = figure.subplots()
    for index, item in enumerate(compute):
        color = f"C{index % 10}"
        axes.scatter(item.flops, item.losses, color=color, s=22, label=item.method)
        curve = item.curve
        if curve is None:
            continue
        grid = np.exp(np.linspace(np.log(item.flops.min()), np.log(item.flops.max()), 100))
        form = f"{curve.A:.3g}·C^-{curve.b:.3f}" + (f" + {curve.E:.3f}" if curve.offset else "")
        axes.plot(grid, curve(grid), color=color, label=f"{item.method} fit: {form}")
    axes.set_xscale("log")
    axes.set_xlabel("training FLOPs")
    axes.set_ylabel(_nice(y))
    axes.set_title("Loss against compute")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    return figure


def plot_leverage(results: Sequence[LeverageResult]) -> Figure:
    """Compute leverage of each method over the baseline at the baseline's points."""
    figure = Figure(figsize=(6.0, 4.5))
    axes = figure.subplots()
    for index, item in enumerate(results):
        defined = np.isfinite(item.values)
        axes.plot(
            item.baseline_flops[defined],
            item.values[defined],
            marker="o",
            color=f"C{index % 10}",
            label=f"{item.method} over {item.baseline}",
        )
    axes.axhline(1.0, color="gray", linewidth=0.8, linestyle=":")
    axes.set_xscale("log")
    axes.set_xlabel("baseline training FLOPs")
    axes.set_ylabel("compute leverage (baseline FLOPs / method FLOPs)")
    axes.set_title("Compute leverage")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    return figure
