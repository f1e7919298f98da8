"""What every study's measures share: results as structured data, intervals, verdicts, LR
curves with their optima, drifts across a range, the curve table and the figures.

Every number comes with a 95% interval from :mod:`hyperp.analysis.bootstrap`; every verdict
comes from :func:`hyperp.reproduce.verdicts.judge`. An optimum whose fit is unreliable or lies
outside the LRs fitted is reported but enters no trend, and a range whose end has no usable
optimum gives no drift at all.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hyperp.analysis.bootstrap import (
    Noise,
    Sweep,
    SweepSample,
    bootstrap_sweeps,
)
from hyperp.analysis.fits import (
    percentile_interval,
)
from hyperp.analysis.io import read_metrics
from hyperp.reproduce.catalogue import (
    Claim,
    Study,
    threshold,
)
from hyperp.reproduce.runner import Curve, Runner, RunTable
from hyperp.reproduce.verdicts import judge


@dataclass
class StudyResult:
    """What one study contributes to ``results.json``; the report renders only this."""

    name: str
    claims: list[dict[str, Any]] = field(default_factory=list)
    numbers: list[dict[str, Any]] = field(default_factory=list)  # context: no verdict
    tables: list[dict[str, Any]] = field(default_factory=list)
    figures: list[dict[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)  # what the data say, in words
    records: list[dict[str, Any]] = field(default_factory=list, repr=False)
    failed: int = 0
    diverged: int = 0
    # Runs of other studies this one trains for a derived setting: (study, what, table) each.
    inputs: list[tuple[str, str, RunTable]] = field(default_factory=list, repr=False)


@dataclass
class Trend:
    """Optima of one variant's curves against the study's scale: point and replicate values."""

    variant: str
    scales: np.ndarray
    log_lr: np.ndarray  # point estimates (NaN where the optimum is not usable)
    replicates: np.ndarray  # R x curves
    usable: np.ndarray

    def slope(self) -> tuple[float, np.ndarray, tuple[float, float]]:
        """Log-log slope of lr* against the scale over usable curves: (point, replicates,
        (smallest, largest) scale used)."""
        keep = self.usable
        if keep.sum() < 2:
            return math.nan, np.full(self.replicates.shape[0], math.nan), (math.nan, math.nan)
        x = np.log(self.scales[keep])
        centred = x - x.mean()
        denominator = float(centred @ centred)
        point = float(centred @ (self.log_lr[keep] - self.log_lr[keep].mean())) / denominator
        reps = self.replicates[:, keep]
        reps = (reps - reps.mean(axis=1, keepdims=True)) @ centred / denominator
        return point, reps, (float(self.scales[keep].min()), float(self.scales[keep].max()))


def _claim(key: str) -> Claim:
    from hyperp.reproduce.studies import CLAIMS

    return next(c for c in CLAIMS if c.key == key)


def interval_of(samples: np.ndarray) -> tuple[float, float]:
    return percentile_interval(samples) if samples.size else (math.nan, math.nan)


def stored(interval: tuple[float, float]) -> list[Any] | None:
    """An interval as results.json keeps it: None without one, ["unbounded", "unbounded"] when
    too many replicates were undefined (JSON has no infinity)."""
    low, high = (float(v) for v in interval)
    if math.isnan(low) or math.isnan(high):
        return None
    if math.isinf(low) or math.isinf(high) or (low == 0 and math.isinf(high)):
        return ["unbounded", "unbounded"]  # also exp() of an unbounded log interval: (0, inf)
    return [low, high]


def claim_result(
    key: str,
    estimate: float,
    samples: np.ndarray,
    inside_regime: bool,
    missing: str | None = None,
    note: str | None = None,
) -> dict[str, Any]:
    claim = _claim(key)
    interval = interval_of(samples) if missing is None else (math.nan, math.nan)
    if missing is None and not math.isfinite(estimate):
        missing = "no estimate"
    verdict = judge(claim, estimate, interval, inside_regime=inside_regime, missing=missing)
    return {
        "key": claim.key,
        "label": claim.label,
        "statement": claim.statement,
        "quantity": claim.quantity,
        "paper": claim.paper,
        "region": claim.region.describe(),
        "regime_sensitive": claim.regime_sensitive,
        "estimate": estimate,
        "interval": stored(interval),
        "dropped": float(np.mean(~np.isfinite(samples))) if samples.size else None,
        "verdict": verdict.to_dict(),
        "note": note,
    }


def number(name: str, estimate: float, samples: np.ndarray, note: str | None = None) -> dict:
    interval = stored(interval_of(samples)) if math.isfinite(estimate) else None
    return {"name": name, "estimate": estimate, "interval": interval, "note": note}


def regime(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Parameters, tokens per parameter and steps of a study's finished runs, and whether its
    median run is inside the paper's regime (catalogue thresholds)."""
    rows = [
        (r.get("params"), r.get("tokens"), r.get("steps"))
        for r in records
        if isinstance(r.get("params"), int | float) and isinstance(r.get("tokens"), int | float)
    ]
    if not rows:
        return {"runs": 0, "inside": False}
    params = np.array([p for p, _, _ in rows], dtype=float)
    ratio = np.array([t / p for p, t, _ in rows], dtype=float)
    steps = np.array([s or 0 for _, _, s in rows], dtype=float)
    inside = bool(
        np.median(ratio) >= threshold("regime_tokens_per_param")
        and np.median(steps) >= threshold("regime_steps")
    )
    return {
        "runs": len(rows),
        "params": [float(params.min()), float(params.max())],
        "tokens_per_param": [float(ratio.min()), float(np.median(ratio)), float(ratio.max())],
        "steps": [int(steps.min()), int(np.median(steps)), int(steps.max())],
        "inside": inside,
    }


def study_tables(runner: Runner, item: Study) -> list[tuple[Curve, RunTable]]:
    out = []
    for arm in item.arms:
        for curve in runner.curves(arm, item.lr_key):
            out.append((curve, runner.table(curve)))
    return out


def collect(result: StudyResult, tables: Sequence[tuple[Curve, RunTable]]) -> None:
    for curve, table in tables:
        result.records += table.records
        result.failed += table.failed
        result.diverged += table.diverged
        if curve.missing:
            result.notes.append(f"{curve.arm.stem}/{curve.directory.name}: {curve.missing}")


def noise_table(noises: dict[str, Noise], sweeps: bool = True) -> dict[str, Any]:
    """Each curve family's noise: the per-run sigma and (sweeps) the seed tilts' spread behind
    every interval of its optima, with their degrees of freedom."""
    untilted = "not measured (one seed per curve)" if sweeps else "-"
    rows = [
        [
            variant,
            noise.sigma if noise.known else None,
            noise.degrees,
            noise.tilt_sigma if noise.tilt_degrees else None,
            noise.tilt_degrees or untilted,
        ]
        for variant, noise in noises.items()
    ]
    return {
        "title": "Noise behind the intervals, per curve family (pooled over its curves)",
        "columns": [
            "variant",
            "per-run sigma (loss)",
            "degrees of freedom",
            "seed tilt sigma (loss per unit ln LR)",
            "degrees of freedom",
        ],
        "rows": rows,
    }


def add_inputs(result: StudyResult, runner: Runner, item: Study) -> None:
    """Count the runs this study trains for its derived settings (Muon's decay, tuned on the
    weight-decay study's curves; a compute arm's base LR, fitted on a width curve), and say
    which decay Muon used."""
    for arm in item.arms:
        if arm.lr_source is None:
            continue
        source_study, source_arm = runner.arm_of(arm.lr_source.stem)
        base = {**dict(arm.lr_source.where), "model.width": _base_width(runner, arm)}
        for curve in runner.curves(source_arm, source_study.lr_key, base):
            what = f"{arm.label}'s base LR"
            result.inputs.append((source_study.name, what, runner.table(curve)))
    if not any("muon_decay" in arm.derived for arm in item.arms):
        return
    source_study, arm = runner.arm_of("wd_muon")
    for curve in runner.curves(arm, source_study.lr_key):
        result.inputs.append((source_study.name, "Muon's decay tuning", runner.table(curve)))
    decay, how = runner.tuned_decay()
    if decay is not None:
        result.notes.append(f"Muon's weight decay here: {decay:g} ({how}).")
    else:
        result.notes.append(f"Muon's weight decay: not available ({how}).")


def _base_width(runner: Runner, arm) -> int:
    spec = runner.arm_spec(arm.stem)
    config = runner._config(spec, {k: v[0] for k, v in spec.axes.items()})
    return config.optim.base_width or config.model.width


def curve_scale(curve: Curve, key: str | None) -> float:
    value = curve.value(key) if key else None
    return float(value) if isinstance(value, int | float) else math.nan


def lr_samples(
    runner: Runner,
    tables: Sequence[tuple[Curve, RunTable]],
    seed: int,
    noises: dict[str, Noise] | None = None,
) -> dict[str, list[tuple[Curve, SweepSample]]]:
    """Per variant: its curves' optima with bootstrap replicates (noise pooled per variant,
    stored in ``noises`` when given)."""
    by_variant: dict[str, list[tuple[Curve, RunTable]]] = {}
    for curve, table in tables:
        if curve.lr_key:
            by_variant.setdefault(curve.variant, []).append((curve, table))
    out = {}
    for index, (variant, members) in enumerate(by_variant.items()):
        ran = [(c, t) for c, t in members if t.sweep is not None]
        samples, noise = bootstrap_sweeps(
            [t.sweep for _, t in ran], replicates=runner.size.replicates, seed=seed + index
        )
        if noises is not None and ran:
            noises[variant] = noise
        fitted = {id(c): sample for (c, _), sample in zip(ran, samples)}
        # A curve without runs stays in its variant, so a range it ends is seen to be open.
        out[variant] = [
            (curve, fitted.get(id(curve)) or _no_runs(curve, runner.size.replicates))
            for curve, _ in members
        ]
    return out


def _no_runs(curve: Curve, replicates: int) -> SweepSample:
    empty = Sweep(np.array([]), (), np.zeros((0, 0)))
    why = curve.missing or "no finished runs"
    nan = np.full(replicates, math.nan)
    return SweepSample(empty, None, why, nan, nan)


def has_runs(samples: dict[str, list[tuple[Curve, SweepSample]]]) -> bool:
    return any(s.sweep.lrs.size for members in samples.values() for _, s in members)


def trend(
    members: Sequence[tuple[Curve, SweepSample]], scale_of: Callable[[Curve], float]
) -> Trend:
    members = sorted(members, key=lambda m: scale_of(m[0]))
    scales = np.array([scale_of(c) for c, _ in members])
    usable = np.array([s.usable for _, s in members])
    log_lr = np.array([math.log(s.fit.lr) if s.usable else math.nan for _, s in members])
    replicates = np.stack([s.log_lr for _, s in members], axis=1) if members else np.zeros((0, 0))
    return Trend(members[0][0].variant if members else "", scales, log_lr, replicates, usable)


def drift(
    trend_: Trend, predicted: float = 0.0
) -> tuple[float, np.ndarray, float, np.ndarray, str]:
    """(drift, replicates, exponent, replicates, note): the optimum's ratio across the scales
    implied by the log-log slope, after dividing by ``scale^predicted``.

    A claim names the whole range of its scales, so both ends need a usable optimum: a drift
    over a narrower range would be judged against a threshold meant for the wider one. Without
    them there is no estimate (NaN) and the note says which end is open; an unusable optimum
    inside the range is left out of the slope, and the note says so."""
    slope, reps, (low, high) = trend_.slope()
    usable = trend_.usable
    left = [f"{s:g}" for s, u in zip(trend_.scales, usable) if not u]
    if usable.size and not (usable[0] and usable[-1]):
        ends = [f"{trend_.scales[i]:g}" for i in (0, -1) if not usable[i]]
        note = (
            f"no usable optimum at {' and '.join(ends)}, an end of the range "
            f"{trend_.scales[0]:g}-{trend_.scales[-1]:g} the claim names"
        )
        nan = np.full(reps.shape, math.nan)
        return math.nan, nan, math.nan, nan, note
    note = f"no usable optimum at {', '.join(left)} (left out)" if left else ""
    if not math.isfinite(slope):
        return math.nan, reps, math.nan, reps, note or "fewer than 2 usable optima"
    span = math.log(high / low)
    with np.errstate(over="ignore"):  # a replicate without a minimum can run off to infinity
        samples = np.exp((reps - predicted) * span)
    return math.exp((slope - predicted) * span), samples, slope, reps, note


def curve_rows(
    samples: dict[str, list[tuple[Curve, SweepSample]]], scale_name: str, scale_of
) -> dict[str, Any]:
    rows = []
    for variant, members in samples.items():
        for curve, sample in sorted(members, key=lambda m: scale_of(m[0])):
            fit = sample.fit
            sweep = sample.sweep
            counts = sweep.seed_counts
            if fit is None:
                rows.append([variant, scale_of(curve), *[None] * 8, sample.error])
                continue
            with np.errstate(over="ignore"):
                interval = stored(interval_of(np.exp(sample.log_lr))) if fit.usable else None
            best = int(np.searchsorted(sweep.lrs, fit.best_lr))
            finite = np.isfinite(sweep.means)
            below, above = int(finite[:best].sum()), int(finite[best + 1 :].sum())
            if fit.usable:
                status = "fitted"
            elif fit.inside:
                status = f"unreliable: {fit.unreliable}"
            else:
                status = f"no optimum: {fit.reason}"
            rows.append(
                [
                    variant,
                    scale_of(curve),
                    fit.lr if fit.usable else None,
                    interval,
                    fit.loss if fit.usable else None,
                    f"{fit.best_lr:.4g} ({fit.best_loss:.4g})",
                    f"{below} / {above}",
                    f"{int(sweep.lrs.size)} x {int(counts.max()) if counts.size else 0}",
                    int(np.isinf(sweep.means).sum()),
                    sample.dropped,
                    status,
                ]
            )
    return {
        "title": "Optimum of each LR curve",
        "columns": [
            "variant",
            scale_name,
            "optimal LR",
            "95% interval",
            "optimal loss",
            "best observed LR (loss)",
            "finite LRs below / above best",
            "LRs x seeds",
            "diverged LRs",
            "share of replicates without a usable optimum",
            "fit",
        ],
        "rows": rows,
    }


def lr_figure(
    figures: Path,
    name: str,
    title: str,
    samples: dict[str, list[tuple[Curve, SweepSample]]],
    scale_name: str,
    scale_of,
    x_label: str,
) -> dict[str, str]:
    """Loss against LR per variant, and the optima against the scale with their intervals."""
    from hyperp.analysis.plots import LRCurve, TrendPanel, plot_lr_curves, plot_trends, save_figure
    from hyperp.analysis.plots import Trend as PlotTrend

    panels = []
    for variant, members in samples.items():
        curves = []
        for curve, sample in sorted(members, key=lambda m: scale_of(m[0])):
            if not sample.sweep.lrs.size:
                continue
            interval = None
            if sample.usable:
                interval = tuple(np.exp(interval_of(sample.log_lr)))
            curves.append(
                LRCurve(
                    f"{scale_name} {scale_of(curve):g}",
                    sample.sweep.lrs,
                    sample.sweep.means,
                    sample.fit,
                    interval,
                )
            )
        panels.append((variant, curves))
    curve_figure = plot_lr_curves(panels, x_label=x_label, title=f"{title}: loss against LR")
    path = figures / f"{name}_curves.png"
    save_figure(curve_figure, path)
    trends = []
    for variant, members in samples.items():
        if not has_runs({variant: members}):
            continue
        line = trend(members, scale_of)
        values = np.exp(line.log_lr)
        best = np.array(
            [
                s.fit.best_lr if s.fit else math.nan
                for _, s in sorted(members, key=lambda m: scale_of(m[0]))
            ]
        )
        shown = np.where(line.usable, values, best)
        intervals = np.array([interval_of(line.replicates[:, i]) for i in range(line.scales.size)])
        low = np.where(line.usable, np.exp(intervals[:, 0]), np.nan) if intervals.size else None
        high = np.where(line.usable, np.exp(intervals[:, 1]), np.nan) if intervals.size else None
        trends.append(PlotTrend(variant, line.scales, shown, low, high, ~line.usable))
    panel = TrendPanel(
        "optimal LR (open: best observed, no usable fit)", scale_name, "optimal LR", trends
    )
    trend_figure = plot_trends([panel], title=f"{title}: optimum against {scale_name}")
    trend_path = figures / f"{name}_optima.png"
    save_figure(trend_figure, trend_path)
    return {"curves": str(path), "optima": str(trend_path)}


def lr_transfer(
    runner: Runner,
    figures: Path,
    seed: int,
    item: Study,
    scale_name: str,
    scale_of,
    predictions: dict[str, float],
    x_label: str = "LR",
) -> tuple[StudyResult, dict[str, list[tuple[Curve, SweepSample]]], dict[str, tuple]]:
    """The common part of the LR-transfer studies: samples, each variant's drift and exponent
    (as context numbers), the curve table and the figures."""
    result = StudyResult(item.name)
    tables = study_tables(runner, item)
    collect(result, tables)
    add_inputs(result, runner, item)
    noises: dict[str, Noise] = {}
    samples = lr_samples(runner, tables, seed, noises)
    drifts = {}
    for variant, members in samples.items():
        line = trend(members, scale_of)
        predicted = predictions.get(variant, 0.0)
        value, reps, slope, slope_reps, note = drift(line, predicted)
        drifts[variant] = (value, reps, slope, slope_reps, note, line)
        result.numbers.append(
            number(f"{variant}: exponent of lr* against {scale_name}", slope, slope_reps, note)
        )
        raw, raw_reps, *_ = drift(line, 0.0)
        result.numbers.append(
            number(
                f"{variant}: optimal LR at the largest {scale_name} over the smallest",
                raw,
                raw_reps,
            )
        )
    result.tables.append(curve_rows(samples, scale_name, scale_of))
    result.tables.append(noise_table(noises))
    if has_runs(samples):
        paths = lr_figure(figures, item.name, item.title, samples, scale_name, scale_of, x_label)
        result.figures += [
            {"path": paths["optima"], "caption": f"optimal LR against {scale_name}"},
            {"path": paths["curves"], "caption": "loss against LR, each curve's fit"},
        ]
    return result, samples, drifts


def drift_claim(key: str, drifts: dict, variant: str, inside: bool) -> dict[str, Any]:
    if variant not in drifts:
        return claim_result(key, math.nan, np.array([]), inside, f"no {variant} curves")
    value, reps, _, _, note, _ = drifts[variant]
    missing = None if math.isfinite(value) else (note or "fewer than 2 usable optima")
    return claim_result(key, value, reps, inside, missing, note or None)


def first_monitor(record: dict[str, Any], key: str) -> float:
    for row in read_metrics(record["_source"]):
        if key in row:
            return float(row[key])
    return math.nan


def last_monitor(record: dict[str, Any], key: str) -> float:
    value = math.nan
    for row in read_metrics(record["_source"]):
        if key in row and isinstance(row[key], int | float):
            value = float(row[key])
    return value


def said(claim: dict[str, Any]) -> str:
    """A claim's number, interval and verdict in words, for a finding."""
    estimate, interval = claim.get("estimate"), claim.get("interval")
    if estimate is None or not math.isfinite(estimate):
        return f"has no estimate ({claim['verdict']['text']})"
    if interval and interval[0] != "unbounded":
        bounds = f"[{interval[0]:.3g}, {interval[1]:.3g}]"
    else:
        bounds = "(interval unbounded)"
    return f"is {estimate:.3g} {bounds}, {claim['verdict']['outcome']}"
