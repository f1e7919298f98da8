"""The width exponent between successive widths (diagnosis): is HyperP's drift of the optimal
LR with width a finite-width effect, fading at the wide end?"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np

from hyperp.analysis.bootstrap import Noise
from hyperp.reproduce.catalogue import HYPERP_HEADS, PRIMARY_HEAD, Claim, Region, Study, threshold
from hyperp.reproduce.runner import Runner
from hyperp.reproduce.studies import width
from hyperp.reproduce.studies.common import (
    StudyResult,
    Trend,
    claim_result,
    curve_scale,
    lr_samples,
    number,
    regime,
    said,
    study_tables,
    trend,
)

STUDY = Study(
    name="width_pairs",
    title="Width exponent between successive widths (diagnosis)",
    question=(
        "Is HyperP's drift of the optimal LR with width a finite-width effect: does the "
        "exponent of lr* against width shrink toward zero between wider pairs of widths?"
    ),
    design=(
        "The width study's curves (no runs of its own). For each pair of successive widths, "
        "the exponent ln(lr*_wide / lr*_narrow) / ln(n_wide / n_narrow), each with its "
        "interval from the same bootstrap replicates, so their difference has one too. A "
        "finite-width effect shows as an exponent that is large between the narrow pair and "
        "near zero between the wide pair."
    ),
    arms=(),
    scale_key="model.width",
    on_request=True,
    reads="width",
)

CLAIMS: tuple[Claim, ...] = (
    Claim(
        "width_pair_widest",
        "1 (width, logit-scale head, widest pair)",
        "Between the two widest models HyperP's optimal LR does not move with width",
        "exponent of lr* against width between the two widest models (logit-scale head)",
        Region(-threshold("width_exponent"), threshold("width_exponent")),
        "one base LR for every width",
        "width_pairs",
    ),
)


def _pairs(line: Trend) -> list[tuple[int, int, float, np.ndarray]]:
    """(narrow, wide, exponent, replicates) of each successive pair; NaN without usable
    optima at both of its widths."""
    out = []
    for first, second in itertools.pairwise(range(line.scales.size)):
        span = math.log(line.scales[second] / line.scales[first])
        local = (line.log_lr[second] - line.log_lr[first]) / span
        reps = (line.replicates[:, second] - line.replicates[:, first]) / span
        out.append((first, second, float(local), reps))
    return out


def analyze(runner: Runner, figures: Path, seed: int) -> StudyResult:
    result = StudyResult(STUDY.name)
    tables = study_tables(runner, width.STUDY)
    for _, table in tables:
        result.records += table.records
    inside = regime(result.records)["inside"]
    noises: dict[str, Noise] = {}
    samples = lr_samples(runner, tables, seed, noises)
    primary = HYPERP_HEADS[PRIMARY_HEAD]
    claim = claim_result("width_pair_widest", math.nan, np.array([]), inside, "no curves")
    pairs_of_primary: list[tuple[float, float, float, np.ndarray]] = []
    for variant, members in samples.items():
        line = trend(members, lambda c: curve_scale(c, "model.width"))
        for first, second, local, reps in _pairs(line):
            narrow, wide = line.scales[first], line.scales[second]
            result.numbers.append(
                number(f"{variant}: exponent of lr* from width {narrow:g} to {wide:g}", local, reps)
            )
            if variant == primary:
                pairs_of_primary.append((narrow, wide, local, reps))
        if variant == primary and pairs_of_primary:
            claim = _widest(pairs_of_primary, line, inside)
    result.claims.append(claim)
    if len(pairs_of_primary) >= 2:
        _, _, narrow_local, narrow_reps = pairs_of_primary[0]
        _, _, wide_local, wide_reps = pairs_of_primary[-1]
        result.numbers.append(
            number(
                f"{primary}: exponent at the widest pair minus at the narrowest",
                wide_local - narrow_local,
                wide_reps - narrow_reps,
            )
        )
    result.findings.append(finding(pairs_of_primary, claim))
    return result


def _widest(pairs, line: Trend, inside: bool) -> dict[str, Any]:
    narrow, wide, local, reps = pairs[-1]
    if not math.isfinite(local):
        open_at = [f"{s:g}" for s, u in zip(line.scales[-2:], line.usable[-2:]) if not u]
        why = f"no usable optimum at width {' and '.join(open_at)}"
        return claim_result("width_pair_widest", math.nan, np.array([]), inside, why)
    return claim_result(
        "width_pair_widest", local, reps, inside, note=f"widths {narrow:g} and {wide:g}"
    )


def finding(pairs, claim: dict[str, Any]) -> str:
    if not pairs:
        return "There are no logit-scale HyperP curves of the width study to read."
    shown = "; ".join(
        f"{narrow:g}-{wide:g}: {local:.3g}" if math.isfinite(local) else f"{narrow:g}-{wide:g}: n/a"
        for narrow, wide, local, _ in pairs
    )
    text = f"The exponent of lr* against width, pair by pair, {shown}. At the widest pair it {said(claim)}"
    outcome = claim["verdict"]["outcome"]
    if outcome == "holds":
        return text + (
            ": the optimum stops moving at the wide end, as a finite-width effect would."
        )
    if outcome == "contradicted":
        return text + ": the optimum still moves at the widest pair, so at these widths the "
        "drift is not confined to the narrow models."
    return text + ": the data do not say whether the drift fades at the wide end."
