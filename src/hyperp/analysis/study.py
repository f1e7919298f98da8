"""A whole scaling study from flat records: LR optima per group, sensitivity, power laws of the
optimum against a scale axis, loss against compute per method, and leverage (docs/method.md §6).

Degenerate pieces (a group with too few points, one scale only, no FLOPs column) do not stop
the study: each is recorded with a message saying what is missing.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from hyperp.analysis.fits import (
    DEFAULT_WINDOW,
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
    leverage,
    sweep_sensitivity,
)
from hyperp.analysis.io import columns, json_safe, record_value

__all__ = [
    "AUTO_GROUP_KEYS",
    "ComputeResult",
    "FitOptions",
    "GroupResult",
    "LeverageResult",
    "PowerLawResult",
    "Study",
    "analyze",
]

# Keys a study is grouped by when --group-by is not given: those that take more than one value.
AUTO_GROUP_KEYS = ("group", "depth", "width", "tokens", "batch_tokens", "seq_len")
# The loss column when --y is not given: the first of these that any record has.
DEFAULT_LOSS_COLUMNS = ("val_loss", "loss")
# An offset curve A C^-b + E has three parameters; below this many points the pure power law
# is preferred (docs/method.md §6: "pure power law when there are few points").
MIN_POINTS_FOR_OFFSET = 4


@dataclass
class FitOptions:
    """What to fit. Column names are flat keys of the records or dotted config keys."""

    x: str = "lr"
    y: str | None = None  # None: val_loss, or loss when the records have no val_loss
    group_by: list[str] | None = None  # None: method column + AUTO_GROUP_KEYS that vary
    scale_axis: str = "tokens"
    method_column: str = "method"
    flops_column: str = "flops"
    baseline: str | None = None  # None: "muon" if present, else "adamw", else none
    method: str | None = None  # None: every method other than the baseline
    target: float | None = None  # scale at which to extrapolate the LR power law
    target_loss: float | None = None
    target_flops: float | None = None
    offset: bool | None = None  # None: offset curve when a method has >= 4 compute points
    window: int | None = DEFAULT_WINDOW  # distinct LRs fitted each side of the best (None: all)
    bootstrap: int = 1000
    seed: int = 0


@dataclass
class GroupResult:
    key: dict[str, Any]
    x: np.ndarray
    y: np.ndarray
    optimum: LROptimum | None = None
    error: str | None = None
    sensitivity: list[SensitivityResult] = field(default_factory=list)
    flops: float | None = None
    method: str = "all"  # the method column's value when the group's runs share one

    @property
    def label(self) -> str:
        return format_key(self.key)

    @property
    def compute_loss(self) -> tuple[float, str]:
        """The group's loss for loss-against-compute: the fitted optimum when it is usable
        (inside the sweep, reliable fit), else the best observed loss."""
        if self.optimum is not None and self.optimum.usable:
            return self.optimum.loss, "fitted optimum"
        finite = self.y[np.isfinite(self.y)]
        return (float(finite.min()), "best observed") if finite.size else (math.nan, "none")

    def to_dict(self) -> dict[str, Any]:
        loss, source = self.compute_loss
        return {
            "key": self.key,
            "label": self.label,
            "n_points": int(self.x.size),
            "x": self.x.tolist(),
            "y": self.y.tolist(),
            "optimum": self.optimum.to_dict() if self.optimum else None,
            "error": self.error,
            "sensitivity": [item.to_dict() for item in self.sensitivity],
            "flops": self.flops,
            "method": self.method,
            "compute_loss": loss,
            "compute_loss_source": source,
        }


@dataclass
class PowerLawResult:
    family: dict[str, Any]
    axis: str
    fit: PowerLawFit | None = None
    error: str | None = None
    lr_intervals: list[tuple[float, float]] = field(default_factory=list)
    target: float | None = None
    # The optimal loss against the same axis, L* = A x^b + C (docs/method.md §6, e.g. sparsity).
    loss_fit: OffsetPowerLawFit | None = None
    loss_error: str | None = None

    @property
    def spread(self) -> float:
        """Largest over smallest optimum along the axis: 1.0 means the LR transfers exactly."""
        if self.fit is None:
            return math.nan
        return float(self.fit.y.max() / self.fit.y.min())

    @property
    def label(self) -> str:
        return format_key(self.family) or "all runs"

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "family": self.family,
            "label": self.label,
            "axis": self.axis,
            "fit": self.fit.to_dict() if self.fit else None,
            "error": self.error,
            "lr_intervals": [list(pair) for pair in self.lr_intervals],
            "spread": self.spread,
            "loss_fit": self.loss_fit.to_dict() if self.loss_fit else None,
            "loss_error": self.loss_error,
        }
        if self.target is not None and self.fit is not None:
            data["target"] = {
                "scale": self.target,
                "optimum": self.fit.predict(self.target),
                "optimum_loglog": self.fit.predict_loglog(self.target),
            }
        return data


@dataclass
class ComputeResult:
    method: str
    flops: np.ndarray
    losses: np.ndarray
    offset_curve: ComputeCurve | None = None
    power_curve: ComputeCurve | None = None
    preferred: str | None = None  # "offset" or "power"
    error: str | None = None

    @property
    def curve(self) -> ComputeCurve | None:
        return self.offset_curve if self.preferred == "offset" else self.power_curve

    def to_dict(self, options: FitOptions) -> dict[str, Any]:
        data: dict[str, Any] = {
            "method": self.method,
            "flops": self.flops.tolist(),
            "losses": self.losses.tolist(),
            "offset_fit": self.offset_curve.to_dict() if self.offset_curve else None,
            "power_fit": self.power_curve.to_dict() if self.power_curve else None,
            "preferred": self.preferred,
            "error": self.error,
        }
        curve = self.curve
        if curve is not None and options.target_flops is not None:
            data["loss_at_target_flops"] = curve(options.target_flops)
        if curve is not None and options.target_loss is not None:
            data["flops_for_target_loss"] = curve.inverse(options.target_loss)
        return data


@dataclass
class LeverageResult:
    method: str
    baseline: str
    baseline_flops: np.ndarray
    baseline_losses: np.ndarray
    values: np.ndarray
    at_target_loss: float | None = None
    at_target_flops: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "baseline": self.baseline,
            "baseline_flops": self.baseline_flops.tolist(),
            "baseline_losses": self.baseline_losses.tolist(),
            "leverage": self.values.tolist(),
            "at_target_loss": self.at_target_loss,
            "at_target_flops": self.at_target_flops,
        }


@dataclass
class Study:
    options: FitOptions
    group_by: list[str]
    n_records: int
    groups: list[GroupResult]
    power_laws: list[PowerLawResult]
    compute: list[ComputeResult]
    leverage: list[LeverageResult]
    messages: list[str]
    failed: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return json_safe(
            {
                "options": asdict(self.options),
                "group_by": self.group_by,
                "n_records": self.n_records,
                "failed_runs": self.failed,
                "messages": self.messages,
                "groups": [group.to_dict() for group in self.groups],
                "power_laws": [law.to_dict() for law in self.power_laws],
                "loss_vs_compute": [item.to_dict(self.options) for item in self.compute],
                "leverage": [item.to_dict() for item in self.leverage],
            }
        )


def format_key(key: dict[str, Any]) -> str:
    return ", ".join(f"{name}={_short(value)}" for name, value in key.items())


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _hashable(value: Any) -> Any:
    """Group keys must be hashable: a list or table value (a config section) becomes JSON text."""
    if isinstance(value, list | dict):
        return json.dumps(value, sort_keys=True)
    return value


def _as_float(value: Any) -> float:
    if value is None or isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _sort_key(value: Any) -> tuple[int, Any]:
    return (
        (0, value)
        if isinstance(value, int | float) and not isinstance(value, bool)
        else (
            1,
            str(value),
        )
    )


def _resolve_group_by(records: Sequence[dict[str, Any]], options: FitOptions) -> list[str]:
    if options.group_by is not None:
        missing = [
            key for key in options.group_by if all(record_value(r, key) is None for r in records)
        ]
        if missing:
            raise ValueError(
                f"--group-by column(s) {', '.join(missing)} not found in any record; "
                "check the column names (dotted names such as model.depth reach into the config)"
            )
        return list(options.group_by)
    keys = []
    for key in (options.method_column, *AUTO_GROUP_KEYS, options.scale_axis):
        if key in keys:
            continue
        values = {repr(record_value(r, key)) for r in records}
        if len(values) > 1:
            keys.append(key)
    return keys


def analyze(
    records: Sequence[dict[str, Any]],
    options: FitOptions | None = None,
    failed: Sequence[Any] = (),
) -> Study:
    """Run every fit of docs/method.md §6 that the records support."""
    options = options or FitOptions()
    if not records:
        raise ValueError("no finished runs or result rows to analyse; check the paths given")
    if all(record_value(r, options.x) is None for r in records):
        raise ValueError(
            f"no record has the x column {options.x!r}; choose one with --x (e.g. lr or base_lr; "
            f"columns: {', '.join(columns(records))})"
        )
    if options.y is None:
        present = [
            c for c in DEFAULT_LOSS_COLUMNS if any(record_value(r, c) is not None for r in records)
        ]
        if not present:
            raise ValueError(
                f"no record has a {' or '.join(DEFAULT_LOSS_COLUMNS)} column; name the loss "
                f"column with --y (columns: {', '.join(columns(records))})"
            )
        options = replace(options, y=present[0])
    if all(record_value(r, options.y) is None for r in records):
        raise ValueError(
            f"no record has the loss column {options.y!r}; choose one with --y "
            f"(columns: {', '.join(columns(records))})"
        )
    for record in records:
        for column in (options.x, options.y):
            value = record_value(record, column)
            if isinstance(value, str):
                raise ValueError(
                    f"{record.get('_source', 'a record')}: {column} {value!r} is not a number; "
                    "fix the value, or leave it empty for a run without one"
                )
    group_by = _resolve_group_by(records, options)
    messages: list[str] = []

    grouped: dict[tuple, list[dict[str, Any]]] = {}
    skipped = 0
    for record in records:
        if record_value(record, options.x) is None:
            skipped += 1
            continue
        key = tuple(_hashable(record_value(record, name)) for name in group_by)
        grouped.setdefault(key, []).append(record)
    if skipped:
        messages.append(f"{skipped} record(s) without {options.x!r} were left out")

    groups: list[GroupResult] = []
    for key in sorted(grouped, key=lambda k: tuple(_sort_key(v) for v in k)):
        rows = grouped[key]
        x = np.array([_as_float(record_value(r, options.x)) for r in rows])
        y = np.array([_as_float(record_value(r, options.y)) for r in rows])
        order = np.argsort(x)
        group = GroupResult(key=dict(zip(group_by, key)), x=x[order], y=y[order])
        flops = np.array([_as_float(record_value(r, options.flops_column)) for r in rows])
        flops = flops[np.isfinite(flops)]
        group.flops = float(np.median(flops)) if flops.size else None
        methods = {record_value(r, options.method_column) for r in rows} - {None}
        if len(methods) == 1:
            group.method = str(methods.pop())
        try:
            group.optimum = fit_lr_optimum(
                group.x,
                group.y,
                window=options.window,
                bootstrap=options.bootstrap,
                seed=options.seed,
            )
        except ValueError as error:
            group.error = str(error)
        if group.optimum is not None and math.isfinite(group.optimum.vertex_lr):
            for k in range(3, group.optimum.n_fit):
                try:
                    group.sensitivity.append(
                        sweep_sensitivity(
                            group.x, group.y, k, window=options.window, seed=options.seed
                        )
                    )
                except ValueError as error:  # e.g. fewer distinct LRs than points
                    messages.append(f"{group.label}: sensitivity k={k}: {error}")
                    break
        groups.append(group)

    power_laws = _power_laws(groups, group_by, options, messages)
    compute = _compute_curves(groups, options, messages)
    leverage_results = _leverage(compute, options, messages)
    return Study(
        options=options,
        group_by=group_by,
        n_records=len(records),
        groups=groups,
        power_laws=power_laws,
        compute=compute,
        leverage=leverage_results,
        messages=messages,
        failed=[{"path": item.path, "error": item.error} for item in failed],
    )


def _power_laws(
    groups: list[GroupResult], group_by: list[str], options: FitOptions, messages: list[str]
) -> list[PowerLawResult]:
    axis = options.scale_axis
    if axis not in group_by:
        messages.append(
            f"no power law of the optimum against {axis!r}: the runs have one {axis} value only "
            "(or none); sweep at least 2 scales, or pick another axis with --scale-axis"
        )
        return []
    families: dict[tuple, list[GroupResult]] = {}
    for group in groups:
        family = tuple((k, v) for k, v in group.key.items() if k != axis)
        families.setdefault(family, []).append(group)
    results = []
    for family, members in families.items():
        result = PowerLawResult(family=dict(family), axis=axis, target=options.target)
        numeric = [g for g in members if _as_float(g.key[axis]) > 0]
        usable = [g for g in numeric if g.optimum is not None and g.optimum.usable]
        if len(numeric) < len(members):
            messages.append(
                f"power law ({result.label}): {axis} must be a positive number; left out "
                + "; ".join(g.label for g in members if g not in numeric)
            )
        without = [g.label for g in numeric if g not in usable]
        if without:
            messages.append(
                f"power law ({result.label}): left out groups without a usable optimum (none "
                f"inside the sweep, or an unreliable fit): {'; '.join(without)}"
            )
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", FewPointsWarning)
                result.fit = fit_power_law(
                    [_as_float(g.key[axis]) for g in usable], [g.optimum.lr for g in usable]
                )
            messages += [f"power law ({result.label}): {w.message}" for w in caught]
            result.lr_intervals = [g.optimum.lr_interval for g in usable]
        except ValueError as error:
            result.error = str(error)
        try:
            result.loss_fit = fit_offset_power_law(
                [_as_float(g.key[axis]) for g in usable], [g.optimum.loss for g in usable]
            )
        except ValueError as error:
            result.loss_error = str(error)
        results.append(result)
    return results


def _compute_curves(
    groups: list[GroupResult], options: FitOptions, messages: list[str]
) -> list[ComputeResult]:
    with_flops = [g for g in groups if g.flops is not None]
    if not with_flops:
        messages.append(
            f"no loss-against-compute fit: no record has the FLOPs column {options.flops_column!r}"
        )
        return []
    by_method: dict[str, list[GroupResult]] = {}
    for group in with_flops:
        method = group.method
        by_method.setdefault(method, []).append(group)
    results = []
    for method in sorted(by_method):
        points = [(g.flops, g.compute_loss[0]) for g in by_method[method]]
        points = [(c, loss) for c, loss in points if math.isfinite(loss)]
        flops = np.array([c for c, _ in points], dtype=float)
        losses = np.array([loss for _, loss in points], dtype=float)
        order = np.argsort(flops)
        result = ComputeResult(method=method, flops=flops[order], losses=losses[order])
        distinct = np.unique(flops).size
        want_offset = (
            options.offset if options.offset is not None else distinct >= MIN_POINTS_FOR_OFFSET
        )
        errors = []
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", FewPointsWarning)
            try:
                result.power_curve = fit_loss_vs_compute(flops, losses, offset=False)
            except ValueError as error:
                errors.append(str(error))
            if distinct >= 3:
                try:
                    result.offset_curve = fit_loss_vs_compute(flops, losses, offset=True)
                except ValueError as error:
                    errors.append(str(error))
        messages += [f"{method}: {w.message}" for w in caught]
        if want_offset and result.offset_curve is not None:
            result.preferred = "offset"
        elif result.power_curve is not None:
            result.preferred = "power"
            if options.offset:
                messages.append(
                    f"{method}: the offset curve needs 3 compute points; using the pure power law"
                )
        if result.preferred is None:
            result.error = "; ".join(errors) or "no compute points"
        results.append(result)
    return results


def _leverage(
    compute: list[ComputeResult], options: FitOptions, messages: list[str]
) -> list[LeverageResult]:
    fitted = {item.method: item for item in compute if item.curve is not None}
    if len(fitted) < 2:
        if len(compute) >= 2:
            messages.append("no leverage: fewer than two methods have a loss-against-compute fit")
        return []
    baseline = options.baseline
    if baseline is None:
        baseline = next((name for name in ("muon", "adamw") if name in fitted), None)
    if baseline is None:
        messages.append(
            "no leverage: name the baseline method with --baseline (methods: "
            f"{', '.join(sorted(fitted))})"
        )
        return []
    if baseline not in fitted:
        raise ValueError(
            f"baseline method {baseline!r} has no loss-against-compute fit; methods with one: "
            f"{', '.join(sorted(fitted))}"
        )
    if options.method is not None and options.method not in fitted:
        raise ValueError(
            f"method {options.method!r} has no loss-against-compute fit; methods with one: "
            f"{', '.join(sorted(fitted))}"
        )
    methods = [options.method] if options.method else [m for m in sorted(fitted) if m != baseline]
    base = fitted[baseline]
    results = []
    for method in methods:
        curve = fitted[method].curve
        assert curve is not None and base.curve is not None
        result = LeverageResult(
            method=method,
            baseline=baseline,
            baseline_flops=base.flops,
            baseline_losses=base.losses,
            values=leverage(curve, base.flops, base.losses),
        )
        if options.target_loss is not None:
            result.at_target_loss = _ratio(
                base.curve.inverse(options.target_loss), curve.inverse(options.target_loss)
            )
        if options.target_flops is not None:
            baseline_loss = base.curve(options.target_flops)
            result.at_target_flops = _ratio(options.target_flops, curve.inverse(baseline_loss))
        results.append(result)
    return results


def _ratio(numerator: float, denominator: float) -> float:
    if not (math.isfinite(numerator) and math.isfinite(denominator)) or denominator <= 0:
        return math.nan
    return float(numerator / denominator)
