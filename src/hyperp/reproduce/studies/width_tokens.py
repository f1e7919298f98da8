"""Width transfer at 2x and 4x the token budget (diagnosis): does HyperP's drift of the optimal
LR with width shrink as the tokens per parameter grow?"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from hyperp.reproduce.catalogue import Arm, Claim, Region, Study, threshold, transfer_region
from hyperp.reproduce.runner import Runner
from hyperp.reproduce.studies.common import (
    StudyResult,
    claim_result,
    curve_scale,
    drift_claim,
    lr_transfer,
    regime,
    said,
)

BASE_BUDGET = "HyperP, logit-scale head, the width study's budget"
LONGER = "HyperP, logit-scale head, steps"

STUDY = Study(
    name="width_tokens",
    title="Width transfer at larger token budgets (diagnosis)",
    question=(
        "Does HyperP's drift of the optimal LR with width shrink as the tokens per parameter grow?"
    ),
    design=(
        "HyperP with the logit-scale head at the width study's widths and LR grid, trained "
        "for 2x and 4x the base's steps at the base's batch (one pass over the data at most); "
        "the 1x curves are the width study's own runs. The drift at each budget, and the "
        "change of the width exponent of the optimal LR from 1x to 4x."
    ),
    arms=(
        Arm(
            "width_hyperp",
            BASE_BUDGET,
            skip=(
                (("model.head_init_rule", "fixed"),),
                (("model.head_init_rule", "inverse_width"),),
            ),
        ),
        Arm("width_tokens", LONGER, "train.steps"),
    ),
    scale_key="model.width",
    on_request=True,
)

CLAIMS: tuple[Claim, ...] = (
    *(
        Claim(
            f"width_tokens_{times}x",
            f"1 (width, logit-scale head, {times}x tokens)",
            f"HyperP's optimal LR transfers across width at {times}x the token budget",
            f"optimal LR at the widest model over the narrowest at {times}x tokens (log-log "
            "fit through all widths)",
            transfer_region(),
            "one base LR for every width",
            "width_tokens",
        )
        for times in (2, 4)
    ),
    Claim(
        "width_tokens_change",
        "1 (width, diagnosis: exponent against tokens)",
        "The width exponent of HyperP's optimal LR changes between 1x and 4x the token budget",
        "exponent of lr* against width at 4x tokens minus at 1x (logit-scale head)",
        Region(-threshold("width_exponent"), threshold("width_exponent"), outside=True),
        "the paper's optimum transfers across width at about 50 tokens per parameter",
        "width_tokens",
    ),
)


def _variants(runner: Runner) -> tuple[str, str, str]:
    """The 1x, 2x and 4x variants (the longer budgets from the sweep file)."""
    steps = sorted(runner.arm_spec(STUDY.arms[1].stem).axes["train.steps"])
    return BASE_BUDGET, STUDY.arms[1].variant(steps[0]), STUDY.arms[1].variant(steps[-1])


def analyze(runner: Runner, figures: Path, seed: int) -> StudyResult:
    result, _, drifts = lr_transfer(
        runner, figures, seed, STUDY, "width", lambda c: curve_scale(c, "model.width"), {}
    )
    inside = regime(result.records)["inside"]
    once, twice, four = _variants(runner)
    result.claims.append(drift_claim("width_tokens_2x", drifts, twice, inside))
    result.claims.append(drift_claim("width_tokens_4x", drifts, four, inside))
    change = _exponent_change(drifts, once, four, inside)
    result.claims.append(change)
    result.findings.append(finding(drifts, (once, twice, four), change))
    return result


def _exponent_change(drifts: dict, once: str, four: str, inside: bool) -> dict[str, Any]:
    if once not in drifts or four not in drifts:
        return claim_result("width_tokens_change", math.nan, np.array([]), inside, "no curves")
    first, last = drifts[once], drifts[four]
    if not (math.isfinite(first[2]) and math.isfinite(last[2])):
        why = first[4] if not math.isfinite(first[2]) else last[4]
        return claim_result("width_tokens_change", math.nan, np.array([]), inside, why)
    # Independent bootstraps (different curves, pooled apart): replicates pair at random.
    return claim_result("width_tokens_change", last[2] - first[2], last[3] - first[3], inside)


def finding(drifts: dict, variants: tuple[str, str, str], change: dict[str, Any]) -> str:
    parts = []
    for times, variant in zip((1, 2, 4), variants):
        value = drifts.get(variant, (math.nan,))[0]
        parts.append(f"{times}x: {value:.3g}" if math.isfinite(value) else f"{times}x: n/a")
    text = (
        "HyperP's optimal LR at the widest model over the narrowest, by token budget, "
        f"{'; '.join(parts)}. The width exponent at 4x minus at 1x {said(change)}"
    )
    outcome = change["verdict"]["outcome"]
    if outcome == "contradicted":
        return text + ": the drift does not change with tokens at these budgets."
    if outcome == "holds":
        first = drifts[variants[0]][2]
        toward = (change["estimate"] > 0) == (first < 0)
        return text + (
            ": the exponent moves toward zero with more tokens, so the drift shrinks."
            if toward
            else ": the exponent moves away from zero with more tokens, so the drift grows."
        )
    return text + ": whether the drift changes with tokens is not resolved here."
