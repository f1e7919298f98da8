"""Token budget: the optimal LR against the tokens trained, T^-0.32."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np

from hyperp.reproduce.catalogue import (
    Arm,
    Claim,
    Region,
    Study,
    threshold,
)
from hyperp.reproduce.runner import Curve, Runner
from hyperp.reproduce.studies.common import (
    StudyResult,
    claim_result,
    lr_transfer,
    number,
    regime,
)

STUDY = Study(
    name="tokens",
    title="Token budget",
    question="Does the optimal LR fall with the token budget as T^-0.32 (docs/method.md §1.4)?",
    design=(
        "LR curves (absolute LR, no token rule) at four budgets of one model, the largest "
        "at least 5 tokens per parameter, each run within one pass over the training "
        "split. Every curve is extended until its optimum has two points on each side. "
        "The exponent over all budgets and the local exponent between neighbouring budgets."
    ),
    # Short and long budgets sweep their own LR ranges; they are one variant.
    arms=(Arm("tokens", "HyperP"), Arm("tokens_long", "HyperP")),
    scale_key="train.steps",
)

CLAIMS: tuple[Claim, ...] = (
    Claim(
        "token_exponent",
        "4 (token exponent)",
        "The optimal LR falls with the token budget as T^-0.32",
        "exponent b of lr* = a T^b (log-log fit through all budgets)",
        Region(-0.32 - threshold("token_exponent"), -0.32 + threshold("token_exponent")),
        "-0.32 (Table 4, d8, 10-166B tokens)",
        "tokens",
    ),
)


def analyze(runner: Runner, figures: Path, seed: int) -> StudyResult:
    def tokens_of(curve: Curve) -> float:
        config = runner._config(curve.spec, {})
        return float(config.plan().tokens)

    result, _, drifts = lr_transfer(runner, figures, seed, STUDY, "training tokens", tokens_of, {})
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
