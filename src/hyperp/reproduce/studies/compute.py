"""Compute leverage: HyperP against Muon, each at its own transferred LR."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hyperp.analysis.bootstrap import (
    CellTable,
    Noise,
    bootstrap_cells,
)
from hyperp.analysis.fits import (
    fit_loss_vs_compute,
    interpolated_leverage,
    leverage,
)
from hyperp.analysis.io import record_value
from hyperp.reproduce.catalogue import (
    HYPERP_HEADS,
    PRIMARY_HEAD,
    Arm,
    Claim,
    LRSource,
    Region,
    Study,
    threshold,
)
from hyperp.reproduce.runner import Runner
from hyperp.reproduce.studies.common import (
    StudyResult,
    add_inputs,
    claim_result,
    collect,
    interval_of,
    noise_table,
    number,
    regime,
    stored,
)

STUDY = Study(
    name="compute",
    title="Compute leverage",
    question=(
        "Does HyperP reach Muon's loss with less compute, each method at its own "
        "transferred LR (docs/method.md §1.5)?"
    ),
    design=(
        "Three Chinchilla-style scales (width and tokens grow with depth), several seeds "
        "per point. Each method's base LR is the optimum fitted at the base model (the "
        "width study's base-width curve; Muon with its tuned decay), transferred by the "
        "method's own rule, and bracketed by x/÷ sqrt(2) at every scale. Leverage is read by "
        "local interpolation between measured points (no curve fit decides it), at the "
        "transferred LR and at the best LR of each bracket; seeds pair the runs of the two "
        "methods. The other two HyperP heads run at their transferred LR."
    ),
    arms=(
        Arm(
            "compute_hyperp",
            HYPERP_HEADS[PRIMARY_HEAD],
            lr_source=LRSource("width_hyperp", (("model.head_init_rule", PRIMARY_HEAD),)),
            bracket=(-1, 0, 1),
        ),
        Arm(
            "compute_muon",
            "Muon",
            derived=("muon_decay", "muon_logit_multiplier"),
            lr_source=LRSource("width_muon"),
            bracket=(-1, 0, 1),
        ),
        Arm(
            "compute_hyperp_fixed",
            HYPERP_HEADS["fixed"],
            lr_source=LRSource("width_hyperp", (("model.head_init_rule", "fixed"),)),
            bracket=(0,),
        ),
        Arm(
            "compute_hyperp_inverse",
            HYPERP_HEADS["inverse_width"],
            lr_source=LRSource("width_hyperp", (("model.head_init_rule", "inverse_width"),)),
            bracket=(0,),
        ),
    ),
    scale_key="model.depth",
    lr_key="optim.base_lr",
)

CLAIMS: tuple[Claim, ...] = (
    Claim(
        "leverage_transferred",
        "5 (compute leverage, transferred LR)",
        "HyperP reaches Muon's loss with less compute",
        "HyperP's compute leverage at Muon's largest scale, each at its transferred LR",
        Region(threshold("leverage"), math.inf),
        "1.58x at 6e21 FLOPs (d24)",
        "compute",
    ),
    Claim(
        "leverage_best",
        "5 (compute leverage, best of bracket)",
        "HyperP reaches Muon's loss with less compute, each at its best bracketed LR",
        "HyperP's compute leverage at Muon's largest scale, each at the best LR of its bracket",
        Region(threshold("leverage"), math.inf),
        "1.58x at 6e21 FLOPs (d24)",
        "compute",
    ),
)


@dataclass
class ComputeCells:
    """Compute runs as cells (variant, depth, base LR step) x seeds, bootstrapped together."""

    order: list[tuple[str, int, int]]
    estimate: np.ndarray
    replicates: np.ndarray
    flops: dict[tuple[str, int], float]
    records: dict[tuple[str, int, int], list[dict[str, Any]]]
    noise: Noise


def compute_cells(runner: Runner, value_of, seed: int, log: bool = False) -> ComputeCells | None:
    """The compute runs' ``value_of(record)`` per cell; blocks are depths (seeds pair the two
    methods' runs at one scale)."""
    item = STUDY
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
    return ComputeCells(order, sample.estimate, sample.replicates, flops, grouped, sample.noise)


def method_curve(cells: ComputeCells, variant: str, best: bool):
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
    d_m, f_m, l_m, r_m = method_curve(cells, method, best)
    d_b, f_b, l_b, r_b = method_curve(cells, baseline, best)
    if r_m is None or r_b is None or d_m.size < 2 or d_b.size < 1:
        return None
    point = interpolated_leverage(f_m, l_m, f_b, l_b)
    reps = np.array(
        [interpolated_leverage(f_m, r_m[i], f_b, r_b[i])[-1] for i in range(r_m.shape[0])]
    )
    return point, reps, (d_b, f_b, l_b), (d_m, f_m, l_m)


def analyze(runner: Runner, figures: Path, seed: int) -> StudyResult:
    item = STUDY
    result = StudyResult(item.name)
    tables = []
    for arm in item.arms:
        for curve in runner.curves(arm, item.lr_key):
            tables.append((curve, runner.table(curve)))
    collect(result, tables)
    add_inputs(result, runner, item)
    result.notes += [
        f"{arm.label}: base LR {runner.lr_sources[arm.stem]}"
        for arm in item.arms
        if arm.stem in runner.lr_sources
    ]
    inside = regime(result.records)["inside"]
    cells = compute_cells(runner, lambda r: r.get("val_loss"), seed)
    if cells is None:
        for key in ("leverage_transferred", "leverage_best"):
            result.claims.append(claim_result(key, math.nan, np.array([]), inside, "no runs"))
        return result
    rows = _leverage_claims(result, cells, inside)
    _other_heads(result, cells)
    _paired_differences(result, cells)
    _reference_power_law(result, cells)
    result.tables.append(
        {
            "title": "Leverage at each Muon scale (local interpolation of HyperP's points)",
            "columns": ["HyperP", "LR", "Muon depth", "Muon FLOPs", "Muon loss", "leverage"],
            "rows": rows,
        }
    )
    result.tables.append(
        noise_table({"every compute run (cells paired by seed)": cells.noise}, False)
    )
    result.tables.append(_loss_table(cells))
    result.figures.append(_figure(cells, figures))
    return result


def _leverage_claims(result: StudyResult, cells: ComputeCells, inside: bool) -> list[list[Any]]:
    """Both leverage claims (transferred LR, best of bracket); the rows of their table."""
    primary, muon = HYPERP_HEADS[PRIMARY_HEAD], "Muon"
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
    return rows


def _other_heads(result: StudyResult, cells: ComputeCells) -> None:
    muon = "Muon"
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


def _paired_differences(result: StudyResult, cells: ComputeCells) -> None:
    """Muon's loss minus HyperP's at each scale, paired by seed."""
    primary, muon = HYPERP_HEADS[PRIMARY_HEAD], "Muon"
    for best in (False, True):
        d_m, _, l_m, r_m = method_curve(cells, primary, best)
        d_b, _, l_b, r_b = method_curve(cells, muon, best)
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


def _reference_power_law(result: StudyResult, cells: ComputeCells) -> None:
    """A power law through HyperP's points, for reference only (it decides nothing)."""
    primary, muon = HYPERP_HEADS[PRIMARY_HEAD], "Muon"
    _, f_m, l_m, _ = method_curve(cells, primary, False)
    _, f_b, l_b, _ = method_curve(cells, muon, False)
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


def _loss_table(cells: ComputeCells) -> dict[str, Any]:
    loss_rows = []
    for index, (variant, depth, step) in enumerate(cells.order):
        loss_rows.append(
            [
                variant,
                depth,
                step,
                cells.flops[(variant, depth)],
                float(cells.estimate[index]),
                stored(interval_of(cells.replicates[:, index])),
                len(cells.records[(variant, depth, step)]),
            ]
        )
    return {
        "title": "Validation loss per scale and LR (step: half-octaves from the transferred LR)",
        "columns": ["method", "depth", "LR step", "FLOPs", "val loss", "95% interval", "seeds"],
        "rows": loss_rows,
    }


def _figure(cells: ComputeCells, figures: Path) -> dict[str, str]:
    from hyperp.analysis.plots import Trend as PlotTrend
    from hyperp.analysis.plots import TrendPanel, plot_trends, save_figure

    primary, muon = HYPERP_HEADS[PRIMARY_HEAD], "Muon"
    trends = []
    for variant in dict.fromkeys(v for v, _, _ in cells.order):
        for best in (False, True):
            _, f, l, r = method_curve(cells, variant, best)
            if r is None:
                continue
            if best and variant not in (primary, muon):
                continue
            bounds = np.array([interval_of(r[:, i]) for i in range(r.shape[1])])
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
    return {"path": str(path), "caption": "loss against compute"}
