"""From runs to numbers: each study's fits, intervals, claims and figures (structured data).

Every number comes with a 95% interval from :mod:`hyperp.analysis.bootstrap` (a residual
bootstrap over seeds and sweep points that keeps the design and its pairing); every verdict
comes from :func:`hyperp.reproduce.verdicts.judge`. An optimum whose fit is unreliable or lies
outside the LRs fitted is reported but enters no trend.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hyperp.analysis.bootstrap import (
    CellTable,
    Sweep,
    SweepSample,
    bootstrap_cells,
    bootstrap_sweeps,
)
from hyperp.analysis.fits import (
    fit_loss_vs_compute,
    interpolated_leverage,
    leverage,
    percentile_interval,
)
from hyperp.analysis.io import read_metrics, record_value
from hyperp.reproduce.catalogue import (
    CLAIMS,
    HYPERP_HEADS,
    PRIMARY_HEAD,
    Claim,
    Study,
    study,
    threshold,
)
from hyperp.reproduce.runner import Curve, Runner, RunTable
from hyperp.reproduce.verdicts import judge

__all__ = ["ANALYZERS", "StudyResult", "Trend"]


@dataclass
class StudyResult:
    """What one study contributes to ``results.json``; the report renders only this."""

    name: str
    claims: list[dict[str, Any]] = field(default_factory=list)
    numbers: list[dict[str, Any]] = field(default_factory=list)  # context: no verdict
    tables: list[dict[str, Any]] = field(default_factory=list)
    figures: list[dict[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list, repr=False)
    failed: int = 0
    diverged: int = 0


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


# --------------------------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------------------------


def _claim(key: str) -> Claim:
    return next(c for c in CLAIMS if c.key == key)


def _interval(samples: np.ndarray) -> tuple[float, float]:
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
    interval = _interval(samples) if missing is None else (math.nan, math.nan)
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
        "verdict": verdict.to_dict(),
        "note": note,
    }


def number(name: str, estimate: float, samples: np.ndarray, note: str | None = None) -> dict:
    interval = stored(_interval(samples)) if math.isfinite(estimate) else None
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


def _tables(runner: Runner, item: Study) -> list[tuple[Curve, RunTable]]:
    out = []
    for arm in item.arms:
        for curve in runner.curves(arm, item.lr_key):
            out.append((curve, runner.table(curve)))
    return out


def _collect(result: StudyResult, tables: Sequence[tuple[Curve, RunTable]]) -> None:
    for curve, table in tables:
        result.records += table.records
        result.failed += table.failed
        result.diverged += table.diverged
        if curve.missing:
            result.notes.append(f"{curve.arm.stem}/{curve.directory.name}: {curve.missing}")


def _scale(curve: Curve, key: str | None) -> float:
    value = curve.value(key) if key else None
    return float(value) if isinstance(value, int | float) else math.nan


def lr_samples(
    runner: Runner,
    tables: Sequence[tuple[Curve, RunTable]],
    seed: int,
) -> dict[str, list[tuple[Curve, SweepSample]]]:
    """Per variant: its curves' optima with bootstrap replicates (noise pooled per variant)."""
    by_variant: dict[str, list[tuple[Curve, RunTable]]] = {}
    for curve, table in tables:
        if curve.lr_key:
            by_variant.setdefault(curve.variant, []).append((curve, table))
    out = {}
    for index, (variant, members) in enumerate(by_variant.items()):
        ran = [(c, t) for c, t in members if t.sweep is not None]
        samples, _ = bootstrap_sweeps(
            [t.sweep for _, t in ran], replicates=runner.size.replicates, seed=seed + index
        )
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
                rows.append([variant, scale_of(curve), *[None] * 7, sample.error])
                continue
            with np.errstate(over="ignore"):
                interval = stored(_interval(np.exp(sample.log_lr))) if fit.usable else None
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
                interval = tuple(np.exp(_interval(sample.log_lr)))
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
        line = trend(members, scale_of)
        values = np.exp(line.log_lr)
        best = np.array(
            [
                s.fit.best_lr if s.fit else math.nan
                for _, s in sorted(members, key=lambda m: scale_of(m[0]))
            ]
        )
        shown = np.where(line.usable, values, best)
        intervals = np.array([_interval(line.replicates[:, i]) for i in range(line.scales.size)])
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


# --------------------------------------------------------------------------------------------
# The studies
# --------------------------------------------------------------------------------------------


def analyze_weight_decay(runner: Runner, figures: Path, seed: int) -> StudyResult:
    item = study("weight_decay")
    result = StudyResult(item.name)
    tables = _tables(runner, item)
    _collect(result, tables)
    samples = lr_samples(runner, tables, seed)
    inside = regime(result.records)["inside"]

    def decay_of(curve: Curve) -> float:
        return float(curve.value("optim.weight_decay") or 0.0)

    losses: dict[str, tuple[list[float], list[np.ndarray], list[float]]] = {}
    for variant, members in samples.items():
        ordered = sorted(members, key=lambda m: decay_of(m[0]))
        decays = [decay_of(c) for c, _ in ordered]
        points = [s.fit.loss if s.usable else math.nan for _, s in ordered]
        reps = [s.loss for _, s in ordered]
        losses[variant] = (decays, reps, points)
        lr_ratio = math.nan
        ratio_reps = np.array([])
        if len(ordered) >= 2 and ordered[0][1].usable and ordered[-1][1].usable:
            lr_ratio = ordered[-1][1].fit.lr / ordered[0][1].fit.lr
            ratio_reps = np.exp(ordered[-1][1].log_lr - ordered[0][1].log_lr)
        result.numbers.append(
            number(
                f"{variant}: optimal LR at decay {decays[-1]:g} over at decay {decays[0]:g}",
                lr_ratio,
                ratio_reps,
            )
        )

    result.claims.append(
        _decay_on_sphere(
            samples.get("MuonH (HyperP)", []), decay_of, inside, runner.size.replicates, seed
        )
    )
    muon = losses.get("Muon")
    if muon and len(muon[0]) >= 2 and muon[0][0] == 0:
        usable = [i for i in range(1, len(muon[0])) if math.isfinite(muon[2][i])]
        if usable and math.isfinite(muon[2][0]):
            best = min(usable, key=lambda i: muon[2][i])
            estimate = muon[2][0] - min(muon[2][0], muon[2][best])
            others = np.stack([muon[1][i] for i in [0, *usable]], axis=1)
            reps = muon[1][0] - np.min(others, axis=1)
            result.claims.append(claim_result("decay_muon", estimate, reps, inside))
        else:
            result.claims.append(
                claim_result("decay_muon", math.nan, np.array([]), inside, "no usable optimum")
            )
    else:
        result.claims.append(
            claim_result("decay_muon", math.nan, np.array([]), inside, "no Muon decay curves")
        )
    decay, how = runner.tuned_decay()
    if decay is not None:
        result.notes.append(f"Muon's decay for every other study: {decay:g} ({how}).")
    result.tables.append(curve_rows(samples, "weight decay", decay_of))
    if samples:
        paths = lr_figure(
            figures, "weight_decay", item.title, samples, "weight decay", decay_of, "LR"
        )
        result.figures.append({"path": paths["curves"], "caption": "loss against LR per decay"})
    return result


def _decay_on_sphere(members, decay_of, inside: bool, replicates: int, seed: int) -> dict:
    """MuonH's loss with the largest decay minus without, paired run by run (same LR, same
    seed) over the LRs fitted around the no-decay optimum: the runs differ only by the decay,
    so their difference is what the code check measures."""
    ordered = sorted(members, key=lambda m: decay_of(m[0]))
    if len(ordered) < 2 or decay_of(ordered[0][0]) != 0 or ordered[0][1].fit is None:
        return claim_result("decay_sphere", math.nan, np.array([]), inside, "no MuonH decay curves")
    none, most = ordered[0][1].sweep, ordered[-1][1].sweep
    units, values = [], []
    for lr in ordered[0][1].fit.lrs:
        for seed_index, run_seed in enumerate(none.seeds):
            if run_seed not in most.seeds or lr not in most.lrs:
                continue
            pair = (
                none.losses[list(none.lrs).index(lr), seed_index],
                most.losses[list(most.lrs).index(lr), most.seeds.index(run_seed)],
            )
            if all(math.isfinite(v) for v in pair):
                units.append((lr, run_seed))
                values.append(pair)
    if len(units) < 3:
        return claim_result("decay_sphere", math.nan, np.array([]), inside, "too few paired runs")
    # Cells are the two decay values; each (LR, seed) pairs one run of each.
    table = CellTable(np.array(values).T, tuple(range(len(units))), np.zeros(2, dtype=int))
    sample = bootstrap_cells(table, replicates=replicates, seed=seed + 3)
    estimate = float(sample.estimate[1] - sample.estimate[0])
    return claim_result(
        "decay_sphere",
        estimate,
        sample.replicates[:, 1] - sample.replicates[:, 0],
        inside,
        note=f"{len(units)} pairs of runs, decay {decay_of(ordered[-1][0]):g} against 0",
    )


def _lr_transfer(
    runner: Runner,
    figures: Path,
    seed: int,
    name: str,
    scale_name: str,
    scale_of,
    predictions: dict[str, float],
    x_label: str = "LR",
) -> tuple[StudyResult, dict[str, list[tuple[Curve, SweepSample]]], dict[str, tuple]]:
    """The common part of the LR-transfer studies: samples, each variant's drift and exponent
    (as context numbers), the curve table and the figures."""
    item = study(name)
    result = StudyResult(item.name)
    tables = _tables(runner, item)
    _collect(result, tables)
    samples = lr_samples(runner, tables, seed)
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
    if samples:
        paths = lr_figure(figures, name, item.title, samples, scale_name, scale_of, x_label)
        result.figures += [
            {"path": paths["optima"], "caption": f"optimal LR against {scale_name}"},
            {"path": paths["curves"], "caption": "loss against LR, each curve's fit"},
        ]
    return result, samples, drifts


def _drift_claim(key: str, drifts: dict, variant: str, inside: bool) -> dict[str, Any]:
    if variant not in drifts:
        return claim_result(key, math.nan, np.array([]), inside, f"no {variant} curves")
    value, reps, _, _, note, _ = drifts[variant]
    missing = None if math.isfinite(value) else (note or "fewer than 2 usable optima")
    return claim_result(key, value, reps, inside, missing, note or None)


def analyze_width(runner: Runner, figures: Path, seed: int) -> StudyResult:
    result, _, drifts = _lr_transfer(
        runner, figures, seed, "width", "width", lambda c: _scale(c, "model.width"), {}
    )
    inside = regime(result.records)["inside"]
    for rule, label in HYPERP_HEADS.items():
        result.claims.append(_drift_claim(f"width_{rule}", drifts, label, inside))
    return result


def analyze_depth(runner: Runner, figures: Path, seed: int) -> StudyResult:
    with_multiplier, without = "with branch multiplier", "without branch multiplier"
    result, samples, drifts = _lr_transfer(
        runner,
        figures,
        seed,
        "depth",
        "depth",
        lambda c: _scale(c, "model.depth"),
        {with_multiplier: -0.5},
    )
    inside = regime(result.records)["inside"]
    result.claims.append(_drift_claim("depth_rule", drifts, with_multiplier, inside))
    result.claims.append(_drift_claim("depth_without", drifts, without, inside))
    # The loss the multiplier buys at the deepest model (independent bootstrap per arm).
    if with_multiplier in samples and without in samples:
        deepest = {v: max(samples[v], key=lambda m: _scale(m[0], "model.depth")) for v in samples}
        a, b = deepest[with_multiplier][1], deepest[without][1]
        if a.usable and b.usable:
            result.numbers.append(
                number(
                    "optimal loss with the multiplier minus without, deepest model",
                    a.fit.loss - b.fit.loss,
                    a.loss - b.loss,
                )
            )
    return result


def analyze_tokens(runner: Runner, figures: Path, seed: int) -> StudyResult:
    def tokens_of(curve: Curve) -> float:
        config = runner._config(curve.spec, {})
        return float(config.plan().tokens)

    result, _, drifts = _lr_transfer(
        runner, figures, seed, "tokens", "training tokens", tokens_of, {}
    )
    inside = regime(result.records)["inside"]
    variant = "HyperP"
    if variant in drifts:
        _, _, slope, slope_reps, note, line = drifts[variant]
        missing = None if math.isfinite(slope) else (note or "fewer than 2 usable optima")
        result.claims.append(
            claim_result("token_exponent", slope, slope_reps, inside, missing, note or None)
        )
        usable = np.flatnonzero(line.usable)
        for first, second in itertools.pairwise(usable):
            span = math.log(line.scales[second] / line.scales[first])
            local = (line.log_lr[second] - line.log_lr[first]) / span
            reps = (line.replicates[:, second] - line.replicates[:, first]) / span
            result.numbers.append(
                number(
                    f"local exponent from {line.scales[first]:.3g} to {line.scales[second]:.3g} "
                    "tokens",
                    local,
                    reps,
                )
            )
    else:
        result.claims.append(
            claim_result("token_exponent", math.nan, np.array([]), inside, "no token curves")
        )
    return result


def analyze_batch(runner: Runner, figures: Path, seed: int) -> StudyResult:
    result, _, drifts = _lr_transfer(
        runner,
        figures,
        seed,
        "batch",
        "batch size (sequences)",
        lambda c: _scale(c, "train.batch_size"),
        {"HyperP": 0.5},
    )
    inside = regime(result.records)["inside"]
    result.claims.append(_drift_claim("batch_rule", drifts, "HyperP", inside))
    return result


def _first_monitor(record: dict[str, Any], key: str) -> float:
    for row in read_metrics(record["_source"]):
        if key in row:
            return float(row[key])
    return math.nan


def _last_monitor(record: dict[str, Any], key: str) -> float:
    value = math.nan
    for row in read_metrics(record["_source"]):
        if key in row and isinstance(row[key], int | float):
            value = float(row[key])
    return value


def analyze_moe(runner: Runner, figures: Path, seed: int) -> StudyResult:
    item = study("moe")
    result = StudyResult(item.name)
    tables = _tables(runner, item)
    _collect(result, tables)
    inside = regime(result.records)["inside"]
    lr_tables = [(c, t) for c, t in tables if c.arm.stem == "moe"]
    samples = lr_samples(runner, lr_tables, seed)

    def k_of(curve: Curve) -> float:
        return float(curve.value("model.moe_granularity") or 1)

    # k = 1 is the same function under both gates: its curve serves both variants.
    shared = [m for m in samples.get("SqrtGate", []) if k_of(m[0]) == 1]
    if (
        "softmax gate" in samples
        and shared
        and not any(k_of(c) == 1 for c, _ in samples["softmax gate"])
    ):
        samples["softmax gate"] = [*shared, *samples["softmax gate"]]
    drifts = {}
    for variant, members in samples.items():
        value, reps, slope, slope_reps, note = drift(trend(members, k_of))
        drifts[variant] = (value, reps, slope, slope_reps, note, None)
        result.numbers.append(
            number(f"{variant}: optimal LR at the largest k over k = 1", value, reps, note or None)
        )
    result.claims.append(_drift_claim("moe_transfer", drifts, "SqrtGate", inside))

    # MoE branch RMS at initialization (the step-1 monitor record: before any update).
    cells, seeds, values = [], [], []
    for curve, table in lr_tables:
        seen = set()
        for record in table.records:
            key = (curve.variant, k_of(curve), int(record_value(record, "train.seed") or 0))
            if key in seen:
                continue
            seen.add(key)
            value = _first_monitor(record, "mlp_branch_rms")
            if math.isfinite(value) and value > 0:
                cells.append(key[:2])
                seeds.append(key[2])
                values.append(math.log(value))
    rms_rows = []
    if cells:
        table, order = CellTable.from_runs(cells, seeds, values)
        sample = bootstrap_cells(table, replicates=runner.size.replicates, seed=seed + 7)
        for gate in ("SqrtGate", "softmax gate"):
            index = [i for i, cell in enumerate(order) if cell[0] == gate]
            if gate == "softmax gate":
                index += [i for i, cell in enumerate(order) if cell == ("SqrtGate", 1.0)]
            if len(index) < 2:
                continue
            point = sample.estimate[index]
            reps = sample.replicates[:, index]
            estimate = float(np.exp(point.max() - point.min()))
            ratio_reps = np.exp(reps.max(axis=1) - reps.min(axis=1))
            if gate == "SqrtGate":
                result.claims.append(claim_result("sqrt_gate_rms", estimate, ratio_reps, inside))
            else:
                result.numbers.append(
                    number(
                        "softmax gate: largest over smallest MoE branch RMS across k at init",
                        estimate,
                        ratio_reps,
                    )
                )
        for i, (gate, k) in enumerate(order):
            bounds = _interval(sample.replicates[:, i])
            label = "either (the same function)" if k == 1 else gate
            rms_rows.append([label, k, float(np.exp(sample.estimate[i])), stored(np.exp(bounds))])
    else:
        result.claims.append(
            claim_result("sqrt_gate_rms", math.nan, np.array([]), inside, "no monitored MoE runs")
        )
    if rms_rows:
        result.tables.append(
            {
                "title": "MoE branch output RMS at initialization (geometric mean over seeds)",
                "columns": ["gate", "k", "RMS", "95% interval"],
                "rows": rms_rows,
            }
        )

    # Balance weight: loss at 0.1 against 0.001, paired by seed.
    balance = [(c, t) for c, t in tables if c.arm.stem == "moe_balance"]
    cells, seeds, values, maxvio = [], [], [], {}
    for curve, table in balance:
        weight = float(curve.value("model.moe_balance_weight"))
        for record in table.records:
            loss = record.get("val_loss")
            if isinstance(loss, int | float):
                cells.append(weight)
                seeds.append(int(record_value(record, "train.seed") or 0))
                values.append(float(loss))
                maxvio.setdefault(weight, []).append(_last_monitor(record, "maxvio"))
    if len(set(cells)) >= 2:
        table, order = CellTable.from_runs(cells, seeds, values)
        sample = bootstrap_cells(table, replicates=runner.size.replicates, seed=seed + 11)
        high, low = order.index(max(order)), order.index(min(order))
        estimate = float(sample.estimate[high] - sample.estimate[low])
        reps = sample.replicates[:, high] - sample.replicates[:, low]
        result.claims.append(
            claim_result(
                "balance_weight",
                estimate,
                reps,
                inside,
                note=f"weights {max(order):g} and {min(order):g}",
            )
        )
        rows = []
        for i, weight in sorted(enumerate(order), key=lambda x: x[1]):
            bounds = stored(_interval(sample.replicates[:, i]))
            rows.append(
                [weight, float(sample.estimate[i]), bounds, float(np.nanmean(maxvio[weight]))]
            )
        result.tables.append(
            {
                "title": "Load-balancing weight (validation loss, mean over seeds; final MaxVio)",
                "columns": ["balance weight", "val loss", "95% interval", "MaxVio"],
                "rows": rows,
            }
        )
    else:
        result.claims.append(
            claim_result("balance_weight", math.nan, np.array([]), inside, "no balance runs")
        )
    result.tables.append(curve_rows(samples, "k", k_of))
    if samples:
        paths = lr_figure(figures, "moe", item.title, samples, "active experts k", k_of, "LR")
        result.figures += [
            {"path": paths["optima"], "caption": "optimal LR against k"},
            {"path": paths["curves"], "caption": "loss against LR per k"},
        ]
    return result


# --------------------------------------------------------------------------------------------
# Compute leverage and stability (the same runs)
# --------------------------------------------------------------------------------------------


@dataclass
class ComputeCells:
    """Compute runs as cells (variant, depth, base LR step) x seeds, bootstrapped together."""

    order: list[tuple[str, int, int]]
    estimate: np.ndarray
    replicates: np.ndarray
    flops: dict[tuple[str, int], float]
    records: dict[tuple[str, int, int], list[dict[str, Any]]]


def compute_cells(runner: Runner, value_of, seed: int, log: bool = False) -> ComputeCells | None:
    """The compute runs' ``value_of(record)`` per cell; blocks are depths (seeds pair the two
    methods' runs at one scale)."""
    item = study("compute")
    cells, seeds, values, blocks = [], [], [], {}
    flops: dict[tuple[str, int], float] = {}
    grouped: dict[tuple[str, int, int], list[dict[str, Any]]] = {}
    for arm in item.arms:
        for curve in runner.curves(arm, item.lr_key):
            if curve.missing or not curve.lrs:
                continue
            depth = int(curve.value("model.depth"))
            table = runner.table(curve)
            centre = curve.lrs[list(arm.bracket).index(0)] if 0 in arm.bracket else curve.lrs[0]
            for record in table.records:
                value = value_of(record)
                if not (isinstance(value, int | float) and math.isfinite(value)):
                    continue
                if log:
                    if value <= 0:
                        continue
                    value = math.log(value)
                lr = float(record_value(record, "optim.base_lr"))
                step = round(math.log(lr / centre) / math.log(math.sqrt(2)))
                cell = (curve.variant, depth, step)
                cells.append(cell)
                seeds.append(int(record_value(record, "train.seed") or 0))
                values.append(float(value))
                blocks[cell] = depth
                flops[(curve.variant, depth)] = float(record["flops"])
                grouped.setdefault(cell, []).append(record)
    if not cells:
        return None
    table, order = CellTable.from_runs(cells, seeds, values, blocks)
    sample = bootstrap_cells(table, replicates=runner.size.replicates, seed=seed)
    return ComputeCells(order, sample.estimate, sample.replicates, flops, grouped)


def _method_curve(cells: ComputeCells, variant: str, best: bool):
    """(depths, flops, point losses, replicate losses R x depths) at the transferred LR, or at
    the best LR of each bracket (chosen again in every replicate)."""
    depths = sorted({d for v, d, _ in cells.order if v == variant})
    points, reps = [], []
    for depth in depths:
        index = [
            i
            for i, (v, d, s) in enumerate(cells.order)
            if v == variant and d == depth and (best or s == 0)
        ]
        if not index:
            points.append(math.nan)
            reps.append(np.full(cells.replicates.shape[0], math.nan))
            continue
        points.append(float(np.nanmin(cells.estimate[index])))
        reps.append(np.min(cells.replicates[:, index], axis=1))
    flops = np.array([cells.flops.get((variant, d), math.nan) for d in depths])
    return np.array(depths), flops, np.array(points), np.stack(reps, axis=1) if reps else None


def _leverage_at_largest(cells: ComputeCells, method: str, baseline: str, best: bool):
    d_m, f_m, l_m, r_m = _method_curve(cells, method, best)
    d_b, f_b, l_b, r_b = _method_curve(cells, baseline, best)
    if r_m is None or r_b is None or d_m.size < 2 or d_b.size < 1:
        return None
    point = interpolated_leverage(f_m, l_m, f_b, l_b)
    reps = np.array(
        [interpolated_leverage(f_m, r_m[i], f_b, r_b[i])[-1] for i in range(r_m.shape[0])]
    )
    return point, reps, (d_b, f_b, l_b), (d_m, f_m, l_m)


def analyze_compute(runner: Runner, figures: Path, seed: int) -> StudyResult:
    from hyperp.analysis.plots import Trend as PlotTrend
    from hyperp.analysis.plots import TrendPanel, plot_trends, save_figure

    item = study("compute")
    result = StudyResult(item.name)
    tables = []
    for arm in item.arms:
        for curve in runner.curves(arm, item.lr_key):
            tables.append((curve, runner.table(curve)))
    _collect(result, tables)
    result.notes += [
        f"{arm.label}: base LR {runner.lr_sources[arm.stem]}"
        for arm in item.arms
        if arm.stem in runner.lr_sources
    ]
    inside = regime(result.records)["inside"]
    primary, muon = HYPERP_HEADS[PRIMARY_HEAD], "Muon"
    cells = compute_cells(runner, lambda r: r.get("val_loss"), seed)
    if cells is None:
        for key in ("leverage_transferred", "leverage_best"):
            result.claims.append(claim_result(key, math.nan, np.array([]), inside, "no runs"))
        return result
    rows = []
    for key, best in (("leverage_transferred", False), ("leverage_best", True)):
        found = _leverage_at_largest(cells, primary, muon, best)
        if found is None:
            result.claims.append(
                claim_result(key, math.nan, np.array([]), inside, "too few compute points")
            )
            continue
        point, reps, baseline, _ = found
        result.claims.append(claim_result(key, float(point[-1]), reps, inside))
        for index, depth in enumerate(baseline[0]):
            rows.append(
                [
                    primary,
                    "best of bracket" if best else "transferred",
                    int(depth),
                    baseline[1][index],
                    baseline[2][index],
                    float(point[index]),
                ]
            )
    for variant in (HYPERP_HEADS["fixed"], HYPERP_HEADS["inverse_width"]):
        found = _leverage_at_largest(cells, variant, muon, False)
        if found is not None:
            point, reps, _, _ = found
            result.numbers.append(
                number(
                    f"{variant}: leverage at Muon's largest scale, transferred LR",
                    float(point[-1]),
                    reps,
                )
            )
    # Paired loss differences per scale, and the (reference only) power-law leverage.
    for best in (False, True):
        d_m, f_m, l_m, r_m = _method_curve(cells, primary, best)
        d_b, f_b, l_b, r_b = _method_curve(cells, muon, best)
        for depth in sorted(set(d_m) & set(d_b)):
            i, j = list(d_m).index(depth), list(d_b).index(depth)
            what = "best of bracket" if best else "transferred LR"
            result.numbers.append(
                number(
                    f"Muon loss minus HyperP loss at depth {depth} ({what}, paired by seed)",
                    float(l_b[j] - l_m[i]),
                    r_b[:, j] - r_m[:, i],
                )
            )
    d_m, f_m, l_m, _ = _method_curve(cells, primary, False)
    d_b, f_b, l_b, _ = _method_curve(cells, muon, False)
    if np.isfinite(l_m).sum() >= 2 and np.isfinite(l_b).sum() >= 1:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            curve = fit_loss_vs_compute(f_m, l_m, offset=False)
        reference = leverage(curve, f_b, l_b)
        result.notes.append(
            "For reference only (it decides nothing): a power law A C^-b through HyperP's "
            f"{int(np.isfinite(l_m).sum())} points gives leverage "
            + ", ".join(f"{v:.3g}" for v in reference)
            + " at Muon's points."
        )
    result.tables.append(
        {
            "title": "Leverage at each Muon scale (local interpolation of HyperP's points)",
            "columns": ["HyperP", "LR", "Muon depth", "Muon FLOPs", "Muon loss", "leverage"],
            "rows": rows,
        }
    )
    loss_rows = []
    for index, (variant, depth, step) in enumerate(cells.order):
        loss_rows.append(
            [
                variant,
                depth,
                step,
                cells.flops[(variant, depth)],
                float(cells.estimate[index]),
                stored(_interval(cells.replicates[:, index])),
                len(cells.records[(variant, depth, step)]),
            ]
        )
    result.tables.append(
        {
            "title": "Validation loss per scale and LR (step: half-octaves from the transferred LR)",
            "columns": ["method", "depth", "LR step", "FLOPs", "val loss", "95% interval", "seeds"],
            "rows": loss_rows,
        }
    )
    trends = []
    for variant in dict.fromkeys(v for v, _, _ in cells.order):
        for best in (False, True):
            _, f, l, r = _method_curve(cells, variant, best)
            if r is None:
                continue
            if best and variant not in (primary, muon):
                continue
            bounds = np.array([_interval(r[:, i]) for i in range(r.shape[1])])
            trends.append(
                PlotTrend(
                    f"{variant}{' (best of bracket)' if best else ''}",
                    f,
                    l,
                    bounds[:, 0],
                    bounds[:, 1],
                    None,
                    "--" if best else "-",
                )
            )
    figure = plot_trends(
        [
            TrendPanel(
                "loss against compute", "training FLOPs", "validation loss", trends, log_y=False
            )
        ],
        title="Compute: each method at its transferred LR (dashed: best of its bracket)",
    )
    path = figures / "compute.png"
    save_figure(figure, path)
    result.figures.append({"path": str(path), "caption": "loss against compute"})
    return result


_INDICATORS = (
    ("attn_z", "attention Z-value", "attn_z_growth", True),
    ("branch_rms", "branch output RMS", "branch_rms_growth", True),
    ("outlier_pct", "activation outliers (%)", "outliers", False),
)


def analyze_stability(runner: Runner, figures: Path, seed: int) -> StudyResult:
    from hyperp.analysis.plots import Trend as PlotTrend
    from hyperp.analysis.plots import TrendPanel, plot_trends, save_figure

    result = StudyResult("stability")
    item = study("compute")
    for arm in item.arms:
        for curve in runner.curves(arm, item.lr_key):
            table = runner.table(curve)
            result.records += table.records
    inside = regime(result.records)["inside"]
    primary = HYPERP_HEADS[PRIMARY_HEAD]
    panels = []
    rows = []
    for offset, (key, title, claim_key, ratio) in enumerate(_INDICATORS):
        cells = compute_cells(
            runner, lambda r, k=key: _last_monitor(r, k), seed + offset, log=ratio
        )
        if cells is None:
            result.claims.append(
                claim_result(claim_key, math.nan, np.array([]), inside, "no monitored runs")
            )
            continue
        trends = []
        for variant in dict.fromkeys(v for v, _, _ in cells.order):
            depths, _, points, reps = _method_curve(cells, variant, False)
            if reps is None or depths.size == 0:
                continue
            if ratio:
                estimate = float(np.exp(points[-1] - points[0]))
                samples = np.exp(reps[:, -1] - reps[:, 0])
                shown, bounds = (
                    np.exp(points),
                    np.exp(np.array([_interval(reps[:, i]) for i in range(depths.size)])),
                )
            else:
                estimate, samples = float(points[-1]), reps[:, -1]
                shown = points
                bounds = np.array([_interval(reps[:, i]) for i in range(depths.size)])
            trends.append(PlotTrend(variant, depths, shown, bounds[:, 0], bounds[:, 1]))
            if variant == primary:
                result.claims.append(claim_result(claim_key, estimate, samples, inside))
            else:
                what = (
                    "growth from the smallest to the largest scale"
                    if ratio
                    else ("at the largest scale")
                )
                result.numbers.append(number(f"{variant}: {title} {what}", estimate, samples))
            for i, depth in enumerate(depths):
                rows.append([title, variant, int(depth), float(shown[i]), stored(tuple(bounds[i]))])
        panels.append(TrendPanel(title, "depth", title, trends, log_y=ratio))
        if not any(c["key"] == claim_key for c in result.claims):
            result.claims.append(
                claim_result(claim_key, math.nan, np.array([]), inside, f"no {primary} runs")
            )
    if rows:
        result.tables.append(
            {
                "title": "Final value of each indicator at the transferred LR (over seeds)",
                "columns": ["indicator", "method", "depth", "value", "95% interval"],
                "rows": rows,
            }
        )
    if panels:
        path = figures / "stability.png"
        save_figure(plot_trends(panels, title="Stability indicators at the end of training"), path)
        result.figures.append({"path": str(path), "caption": "indicators against scale"})
    return result


ANALYZERS: dict[str, Callable[[Runner, Path, int], StudyResult]] = {
    "weight_decay": analyze_weight_decay,
    "width": analyze_width,
    "depth": analyze_depth,
    "tokens": analyze_tokens,
    "batch": analyze_batch,
    "moe": analyze_moe,
    "compute": analyze_compute,
    "stability": analyze_stability,
}
