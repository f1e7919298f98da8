"""Stability: the indicators the compute runs logged, against scale."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from hyperp.reproduce.catalogue import (
    HYPERP_HEADS,
    PRIMARY_HEAD,
    Claim,
    Region,
    Study,
    threshold,
)
from hyperp.reproduce.runner import Runner
from hyperp.reproduce.studies.common import (
    StudyResult,
    claim_result,
    interval_of,
    last_monitor,
    number,
    regime,
    stored,
)
from hyperp.reproduce.studies.compute import STUDY as COMPUTE
from hyperp.reproduce.studies.compute import compute_cells, method_curve

STUDY = Study(
    name="stability",
    title="Stability",
    question="Do the stability indicators stay bounded as the model grows (docs/method.md §1.6)?",
    design=(
        "The indicators the compute runs logged (attention Z-value, branch output RMS, "
        "activation outliers), at the transferred LR, seeds pooled: each one's growth from "
        "the smallest to the largest scale."
    ),
    arms=(),
    scale_key="model.depth",
    reads="compute",
)

CLAIMS: tuple[Claim, ...] = (
    Claim(
        "attn_z_growth",
        "6 (attention Z-value)",
        "The attention Z-value stays bounded with scale",
        "final attention Z-value at the largest scale over the smallest, HyperP",
        Region(-math.inf, threshold("growth")),
        "bounded, not growing with scale",
        "stability",
    ),
    Claim(
        "branch_rms_growth",
        "6 (branch output RMS)",
        "The branch output RMS stays bounded with scale",
        "final branch output RMS at the largest scale over the smallest, HyperP",
        Region(-math.inf, threshold("growth")),
        "bounded, not growing with scale",
        "stability",
    ),
    Claim(
        "outliers",
        "6 (activation outliers)",
        "Activation outliers stay rare at scale",
        "final share of outlier activations at the largest scale (%), HyperP",
        Region(-math.inf, threshold("outliers_pct")),
        "bounded",
        "stability",
    ),
)


_INDICATORS = (
    ("attn_z", "attention Z-value", "attn_z_growth", True),
    ("branch_rms", "branch output RMS", "branch_rms_growth", True),
    ("outlier_pct", "activation outliers (%)", "outliers", False),
)


def analyze(runner: Runner, figures: Path, seed: int) -> StudyResult:
    from hyperp.analysis.plots import Trend as PlotTrend
    from hyperp.analysis.plots import TrendPanel, plot_trends, save_figure

    result = StudyResult("stability")
    item = COMPUTE
    for arm in item.arms:
        for curve in runner.curves(arm, item.lr_key):
            table = runner.table(curve)
            result.records += table.records
    inside = regime(result.records)["inside"]
    primary = HYPERP_HEADS[PRIMARY_HEAD]
    panels = []
    rows = []
    for offset, (key, title, claim_key, ratio) in enumerate(_INDICATORS):
        cells = compute_cells(runner, lambda r, k=key: last_monitor(r, k), seed + offset, log=ratio)
        if cells is None:
            result.claims.append(
                claim_result(claim_key, math.nan, np.array([]), inside, "no monitored runs")
            )
            continue
        trends = []
        for variant in dict.fromkeys(v for v, _, _ in cells.order):
            depths, _, points, reps = method_curve(cells, variant, False)
            if reps is None or depths.size == 0:
                continue
            if ratio:
                estimate = float(np.exp(points[-1] - points[0]))
                samples = np.exp(reps[:, -1] - reps[:, 0])
                shown, bounds = (
                    np.exp(points),
                    np.exp(np.array([interval_of(reps[:, i]) for i in range(depths.size)])),
                )
            else:
                estimate, samples = float(points[-1]), reps[:, -1]
                shown = points
                bounds = np.array([interval_of(reps[:, i]) for i in range(depths.size)])
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
