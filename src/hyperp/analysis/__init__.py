"""Scaling analysis of docs/method.md §6, from files only (numpy, scipy, matplotlib; no torch).

- ``fit_lr_optimum(lrs, losses)``: optimum of one LR sweep, fitted around its best point, with
  bootstrap interval and reliability flags.
- ``sweep_sensitivity(lrs, losses, k)``: how much k of the n points move the optimum.
- ``fit_power_law(x, y)``: ``y = a x^b`` by linear-space NLS and by log-log least squares.
- ``fit_offset_power_law(x, y)``: ``y = A x^b + C`` (e.g. the optimal loss against sparsity).
- ``fit_loss_vs_compute(flops, losses, offset=True)``: ``L(C) = A C^-b + E``.
- ``leverage(curve, flops, losses)``: compute ratio of the curve's method over a baseline;
  ``interpolated_leverage(...)`` the same read off measured points, without a curve fit.
- ``hyperp.analysis.bootstrap``: intervals for designed studies (seeds, sweeps, paired cells).
- ``load_records``, ``analyze``, ``format_summary``, ``write_report``: the ``hyperp fit`` pipeline.
Plots live in ``hyperp.analysis.plots`` (imported on demand, so fits do not load matplotlib).
"""

from hyperp.analysis.bootstrap import (
    CellTable,
    Sweep,
    bootstrap_cells,
    bootstrap_sweeps,
)
from hyperp.analysis.fits import (
    ComputeCurve,
    FewPointsWarning,
    LROptimum,
    OffsetPowerLawFit,
    PowerLawFit,
    SensitivityResult,
    fit_loss_vs_compute,
    fit_lr_optimum,
    fit_offset_power_law,
    fit_power_law,
    interpolated_leverage,
    leverage,
    percentile_interval,
    sweep_sensitivity,
)
from hyperp.analysis.io import (
    FailedRun,
    Records,
    json_safe,
    load_records,
    read_metrics,
    record_value,
)
from hyperp.analysis.report import format_summary, write_report
from hyperp.analysis.study import FitOptions, Study, analyze

__all__ = [
    "CellTable",
    "ComputeCurve",
    "FailedRun",
    "FewPointsWarning",
    "FitOptions",
    "LROptimum",
    "OffsetPowerLawFit",
    "PowerLawFit",
    "Records",
    "SensitivityResult",
    "Study",
    "Sweep",
    "analyze",
    "bootstrap_cells",
    "bootstrap_sweeps",
    "fit_loss_vs_compute",
    "fit_lr_optimum",
    "fit_offset_power_law",
    "fit_power_law",
    "format_summary",
    "interpolated_leverage",
    "json_safe",
    "leverage",
    "load_records",
    "percentile_interval",
    "read_metrics",
    "record_value",
    "sweep_sensitivity",
    "write_report",
]
