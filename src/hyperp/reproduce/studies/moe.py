"""Mixture of experts: transfer across k with SqrtGate, its output RMS, the balance weight."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from hyperp.analysis.bootstrap import (
    CellTable,
    Noise,
    bootstrap_cells,
)
from hyperp.analysis.io import record_value
from hyperp.reproduce.catalogue import (
    Arm,
    Claim,
    Region,
    Study,
    threshold,
    transfer_region,
)
from hyperp.reproduce.runner import Curve, Runner
from hyperp.reproduce.studies.common import (
    StudyResult,
    claim_result,
    collect,
    curve_rows,
    drift,
    drift_claim,
    first_monitor,
    has_runs,
    interval_of,
    last_monitor,
    lr_figure,
    lr_samples,
    noise_table,
    number,
    regime,
    stored,
    study_tables,
    trend,
)

STUDY = Study(
    name="moe",
    title="Mixture of experts",
    question=(
        "Does the optimum transfer across the number of active experts k with SqrtGate, and "
        "does SqrtGate keep the MoE output RMS independent of k (docs/method.md §1.1, §1.7)? Is a "
        "load-balancing weight of 0.1 tolerated?"
    ),
    design=(
        "LR curves at k = 1, 2, 4 (sparsity 2) with SqrtGate and with the plain softmax "
        "gate (k = 1 is the same function under both gates: one curve serves both). The "
        "MoE branch RMS at initialization from the same runs. Three balance weights at one "
        "LR, several seeds."
    ),
    arms=(
        Arm(
            "moe",
            "MoE",
            "model.moe_sqrt_gate",
            {"True": "SqrtGate", "False": "softmax gate"},
            skip=((("model.moe_sqrt_gate", False), ("model.moe_granularity", 1)),),
        ),
        Arm("moe_balance", "balance weight"),
    ),
    scale_key="model.moe_granularity",
)

CLAIMS: tuple[Claim, ...] = (
    Claim(
        "moe_transfer",
        "1 (MoE granularity, SqrtGate)",
        "With SqrtGate the optimal LR transfers across the number of active experts k",
        "optimal LR at the largest k over k = 1 (log-log fit through all k), SqrtGate",
        transfer_region(),
        "no factor for sparsity or granularity: SqrtGate carries it",
        "moe",
    ),
    Claim(
        "sqrt_gate_rms",
        "7a (SqrtGate output RMS)",
        "SqrtGate keeps the MoE output RMS independent of k",
        "largest over smallest MoE branch RMS across k at initialization, SqrtGate",
        Region(-math.inf, threshold("rms_flat")),
        "RMS independent of k",
        "moe",
        regime_sensitive=False,
    ),
    Claim(
        "balance_weight",
        "7b (balance weight 0.1)",
        "A load-balancing weight of 0.1 is tolerated",
        "loss at weight 0.1 minus at weight 0.001 (paired by seed)",
        Region(-math.inf, threshold("loss")),
        "0.1 tolerated, with good balance",
        "moe",
    ),
)


def k_of(curve: Curve) -> float:
    return float(curve.value("model.moe_granularity") or 1)


def analyze(runner: Runner, figures: Path, seed: int) -> StudyResult:
    result = StudyResult(STUDY.name)
    tables = study_tables(runner, STUDY)
    collect(result, tables)
    inside = regime(result.records)["inside"]
    lr_tables = [(c, t) for c, t in tables if c.arm.stem == "moe"]
    noises: dict[str, Noise] = {}
    samples = lr_samples(runner, lr_tables, seed, noises)
    _transfer(result, samples, inside)
    _rms_at_init(result, lr_tables, runner.size.replicates, seed + 7, inside)
    balance = [(c, t) for c, t in tables if c.arm.stem == "moe_balance"]
    _balance(result, balance, runner.size.replicates, seed + 11, inside)
    result.tables.append(curve_rows(samples, "k", k_of))
    result.tables.append(noise_table(noises))
    if has_runs(samples):
        paths = lr_figure(figures, "moe", STUDY.title, samples, "active experts k", k_of, "LR")
        result.figures += [
            {"path": paths["optima"], "caption": "optimal LR against k"},
            {"path": paths["curves"], "caption": "loss against LR per k"},
        ]
    return result


def _transfer(result: StudyResult, samples: dict, inside: bool) -> None:
    """The optimum across k per gate; k = 1 is the same function under both gates, so its
    curve serves both variants."""
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
    result.claims.append(drift_claim("moe_transfer", drifts, "SqrtGate", inside))


def _rms_at_init(result: StudyResult, lr_tables, replicates: int, seed: int, inside: bool) -> None:
    """The MoE branch RMS at initialization (the step-1 monitor record: before any update)."""
    cells, seeds, values = [], [], []
    for curve, table in lr_tables:
        seen = set()
        for record in table.records:
            key = (curve.variant, k_of(curve), int(record_value(record, "train.seed") or 0))
            if key in seen:
                continue
            seen.add(key)
            value = first_monitor(record, "mlp_branch_rms")
            if math.isfinite(value) and value > 0:
                cells.append(key[:2])
                seeds.append(key[2])
                values.append(math.log(value))
    if not cells:
        result.claims.append(
            claim_result("sqrt_gate_rms", math.nan, np.array([]), inside, "no monitored MoE runs")
        )
        return
    table, order = CellTable.from_runs(cells, seeds, values)
    sample = bootstrap_cells(table, replicates=replicates, seed=seed)
    for gate in ("SqrtGate", "softmax gate"):
        index = [i for i, cell in enumerate(order) if cell[0] == gate]
        if gate == "softmax gate":
            index += [i for i, cell in enumerate(order) if cell == ("SqrtGate", 1.0)]
        if len(index) < 2:
            continue
        point, reps = sample.estimate[index], sample.replicates[:, index]
        estimate = float(np.exp(point.max() - point.min()))
        ratio_reps = np.exp(reps.max(axis=1) - reps.min(axis=1))
        if gate == "SqrtGate":
            result.claims.append(claim_result("sqrt_gate_rms", estimate, ratio_reps, inside))
        else:
            name = "softmax gate: largest over smallest MoE branch RMS across k at init"
            result.numbers.append(number(name, estimate, ratio_reps))
    rows = []
    for i, (gate, k) in enumerate(order):
        bounds = interval_of(sample.replicates[:, i])
        label = "either (the same function)" if k == 1 else gate
        rows.append([label, k, float(np.exp(sample.estimate[i])), stored(np.exp(bounds))])
    result.tables.append(
        {
            "title": "MoE branch output RMS at initialization (geometric mean over seeds)",
            "columns": ["gate", "k", "RMS", "95% interval"],
            "rows": rows,
        }
    )


def _balance(result: StudyResult, balance, replicates: int, seed: int, inside: bool) -> None:
    """The loss at the largest balance weight against the smallest, paired by seed."""
    cells, seeds, values, maxvio = [], [], [], {}
    for curve, table in balance:
        weight = float(curve.value("model.moe_balance_weight"))
        for record in table.records:
            loss = record.get("val_loss")
            if isinstance(loss, int | float):
                cells.append(weight)
                seeds.append(int(record_value(record, "train.seed") or 0))
                values.append(float(loss))
                maxvio.setdefault(weight, []).append(last_monitor(record, "maxvio"))
    if len(set(cells)) < 2:
        result.claims.append(
            claim_result("balance_weight", math.nan, np.array([]), inside, "no balance runs")
        )
        return
    table, order = CellTable.from_runs(cells, seeds, values)
    sample = bootstrap_cells(table, replicates=replicates, seed=seed)
    high, low = order.index(max(order)), order.index(min(order))
    estimate = float(sample.estimate[high] - sample.estimate[low])
    reps = sample.replicates[:, high] - sample.replicates[:, low]
    note = f"weights {max(order):g} and {min(order):g}"
    result.claims.append(claim_result("balance_weight", estimate, reps, inside, note=note))
    rows = []
    for i, weight in sorted(enumerate(order), key=lambda x: x[1]):
        bounds = stored(interval_of(sample.replicates[:, i]))
        rows.append([weight, float(sample.estimate[i]), bounds, float(np.nanmean(maxvio[weight]))])
    result.tables.append(
        {
            "title": "Load-balancing weight (validation loss, mean over seeds; final MaxVio)",
            "columns": ["balance weight", "val loss", "95% interval", "MaxVio"],
            "rows": rows,
        }
    )
