"""Scaling analysis of METHOD.md section 6, from files only (numpy, scipy, matplotlib; no torch).

- ``fit_lr_optimum(lrs, losses)``: optimum of one LR sweep, with bootstrap interval.
- ``sweep_sensitivity(lrs, losses, k)``: how much k of the n points move the optimum.
- ``fit_power_law(x, y)``: ``y = a x^b`` by linear-space NLS and by log-log least squares.
- ``fit_offset_power_law(x, y)``: ``y = A x^b + C`` (e.g. the optimal loss against sparsity).
- ``fit_loss_vs_compute(flops, losses, offset=True)``: ``L(C) = A C^-b + E``.
- ``leverage(curve, flops, losses)``: compute ratio of the curve's method over a baseline.
- ``load_records``, ``analyze``, ``format_summary``, ``write_report``: the ``hyperp fit`` pipeline.
Plots live in ``hyperp.analysis.plots`` (imported on demand, so fits do not load matplotlib).
"""

from hyperp.analysis.fits import (
    ComputeCurve,
    LROptimum,
    OffsetPowerLawFit,
    PowerLawFit,
    SensitivityResult,
    fit_loss_vs_compute,
    fit_lr_optimum,
    fit_offset_power_law,
    fit_power_law,
    leverage,
    sweep_sensitivity,
)
from hyperp.analysis.io import FailedRun, Records, load_records, record_value
from hyperp.analysis.report import format_summary, write_report
from hyperp.analysis.study import FitOptions, Study, analyze

__all__ = [
    "ComputeCurve",
    "FailedRun",
    "FitOptions",
    "LROptimum",
    "OffsetPowerLawFit",
    "PowerLawFit",
    "Records",
    "SensitivityResult",
    "Study",
    "analyze",
    "fit_loss_vs_compute",
    "fit_lr_optimum",
    "fit_offset_power_law",
    "fit_power_law",
    "format_summary",
    "leverage",
    "load_records",
    "record_value",
    "sweep_sensitivity",
    "write_report",
]
