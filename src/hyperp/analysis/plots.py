"""Plots of a study, in the style of the paper's figures (docs/method.md §6).

Figures are built with ``matplotlib.figure.Figure`` directly (the Agg canvas, no pyplot state),
so they work headless and in threads, and tests can inspect the returned objects.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from hyperp.analysis.fits import LROptimum
from hyperp.analysis.study import (
    ComputeResult,
    GroupResult,
    LeverageResult,
    PowerLawResult,
    format_key,
)
from hyperp.fileio import atomic_write_bytes

__all__ = [
    "LRCurve",
    "Trend",
    "TrendPanel",
    "plot_leverage",
    "plot_loss_vs_compute",
    "plot_lr_curves",
    "plot_lr_sweeps",
    "plot_power_laws",
    "plot_trends",
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


@dataclass
class LRCurve:
    """One LR curve to draw: its points, the fit (parabola over the LRs fitted, and the
    optimum), and the optimum's interval (default: the fit's own)."""

    label: str
    lrs: np.ndarray
    losses: np.ndarray
    fit: LROptimum | None = None
    interval: tuple[float, float] | None = None


@dataclass
class Trend:
    """A series against a scale: points with optional interval bars; ``hollow`` marks points
    that are not estimates in full (e.g. a best observed point where no fit was usable)."""

    label: str
    x: np.ndarray
    y: np.ndarray
    low: np.ndarray | None = None
    high: np.ndarray | None = None
    hollow: np.ndarray | None = None
    linestyle: str = "-"


@dataclass
class TrendPanel:
    title: str
    x_label: str
    y_label: str
    trends: list[Trend] = field(default_factory=list)
    log_x: bool = True
    log_y: bool = True
    hline: float | None = None  # a reference level (e.g. leverage 1)


def _grid(panels: int, width: float, height: float) -> tuple[Figure, np.ndarray]:
    columns = min(max(panels, 1), 3)
    rows = math.ceil(max(panels, 1) / columns)
    figure = Figure(figsize=(width * columns, height * rows), layout="constrained")
    axes_list = figure.subplots(rows, columns, squeeze=False).ravel()
    for axes in axes_list[panels:]:
        axes.set_visible(False)
    return figure, axes_list


def _draw_optimum(axes, fit: LROptimum, interval, color: str) -> None:
    if fit.usable:
        low, high = interval if interval is not None else fit.lr_interval
        error = None
        if math.isfinite(low) and math.isfinite(high):
            error = [[max(fit.lr - low, 0.0)], [max(high - fit.lr, 0.0)]]
        axes.errorbar(
            [fit.lr],
            [fit.loss],
            xerr=error,
            color=color,
            marker="*",
            markersize=11,
            capsize=3,
            linestyle="none",
        )
    else:
        # No usable optimum: the best observed point, drawn open.
        axes.plot(
            [fit.best_lr],
            [fit.best_loss],
            marker="o",
            markersize=10,
            markerfacecolor="none",
            color=color,
            linestyle="none",
        )


def plot_lr_curves(
    panels: Sequence[tuple[str, Sequence[LRCurve]]],
    *,
    x_label: str = "learning rate",
    y_label: str = "validation loss",
    title: str = "Loss against learning rate (stars: fitted optima, open circles: no usable optimum)",
) -> Figure:
    """Loss against LR, one panel per (title, curves), one colour per curve: the points, the
    parabola over the LRs it was fitted to, and the optimum with its interval."""
    figure, axes_list = _grid(len(panels), 5.0, 3.9)
    for axes, (panel_title, curves) in zip(axes_list, panels):
        for index, curve in enumerate(curves):
            color = f"C{index % 10}"
            finite = np.isfinite(curve.losses)
            axes.scatter(
                curve.lrs[finite], curve.losses[finite], color=color, s=16, label=curve.label
            )
            if curve.fit is None:
                continue
            lo, hi = curve.fit.lr_range
            grid = np.exp(np.linspace(np.log(lo), np.log(hi), 80))
            axes.plot(grid, curve.fit.curve(grid), color=color, linewidth=1.1)
            _draw_optimum(axes, curve.fit, curve.interval, color)
        axes.set_xscale("log")
        axes.xaxis.set_minor_formatter(NullFormatter())  # minor labels overlap on short ranges
        axes.set_xlabel(x_label)
        axes.set_ylabel(y_label)
        axes.set_title(panel_title, fontsize=9)
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize=7)
    figure.suptitle(title, fontsize=10)
    return figure


def plot_trends(panels: Sequence[TrendPanel], *, title: str = "") -> Figure:
    """Series against a scale, one panel each, with interval bars and open (hollow) points."""
    figure, axes_list = _grid(len(panels), 4.8, 3.7)
    for axes, panel in zip(axes_list, panels):
        for index, trend in enumerate(panel.trends):
            color = f"C{index % 10}"
            x, y = np.asarray(trend.x, dtype=float), np.asarray(trend.y, dtype=float)
            axes.plot(
                x, y, color=color, linestyle=trend.linestyle, linewidth=1.1, label=trend.label
            )
            if trend.low is not None and trend.high is not None:
                low = np.asarray(trend.low, dtype=float)
                high = np.asarray(trend.high, dtype=float)
                ok = np.isfinite(low) & np.isfinite(high) & np.isfinite(y)
                error = np.array([np.maximum(y - low, 0), np.maximum(high - y, 0)])[:, ok]
                axes.errorbar(x[ok], y[ok], yerr=error, color=color, capsize=3, linestyle="none")
            hollow = (
                np.zeros(x.size, dtype=bool) if trend.hollow is None else np.asarray(trend.hollow)
            )
            axes.plot(x[~hollow], y[~hollow], marker="o", color=color, linestyle="none")
            axes.plot(
                x[hollow],
                y[hollow],
                marker="o",
                markerfacecolor="none",
                color=color,
                linestyle="none",
            )
        if panel.hline is not None:
            axes.axhline(panel.hline, color="gray", linewidth=0.8, linestyle=":")
        if panel.log_x:
            axes.set_xscale("log")
            axes.xaxis.set_minor_formatter(NullFormatter())
        if panel.log_y:
            axes.set_yscale("log")
            axes.yaxis.set_minor_formatter(NullFormatter())
        axes.set_xlabel(panel.x_label)
        axes.set_ylabel(panel.y_label)
        axes.set_title(panel.title, fontsize=9)
        axes.grid(True, which="both", alpha=0.3)
        if panel.trends:
            axes.legend(fontsize=7)
    if title:
        figure.suptitle(title, fontsize=10)
    return figure


def _family_of(group: GroupResult, scale_axis: str) -> str:
    return format_key({k: v for k, v in group.key.items() if k != scale_axis}) or "all runs"


def plot_lr_sweeps(
    groups: Sequence[GroupResult], *, x: str = "lr", y: str = "val_loss", scale_axis: str = "tokens"
) -> Figure:
    """Loss against LR, one panel per family (group minus the scale axis), one colour per group:
    the points, the fitted parabola, and the optimum with its bootstrap interval."""
    families: dict[str, list[LRCurve]] = {}
    for group in groups:
        label = format_key({k: v for k, v in group.key.items() if k == scale_axis})
        curve = LRCurve(label or group.label or "runs", group.x, group.y, group.optimum)
        families.setdefault(_family_of(group, scale_axis), []).append(curve)
    return plot_lr_curves(list(families.items()), x_label=_nice(x), y_label=_nice(y))


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
