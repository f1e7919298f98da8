"""Depth transfer: Depth-muP's branch multiplier and LR factor sqrt(d0/d)."""

from __future__ import annotations

from pathlib import Path

from hyperp.reproduce.catalogue import (
    BASE,
    BASE_CURVE,
    Arm,
    Claim,
    Region,
    SharedCurve,
    Study,
    threshold,
    transfer_region,
)
from hyperp.reproduce.runner import Runner
from hyperp.reproduce.studies.common import (
    StudyResult,
    curve_scale,
    drift_claim,
    lr_transfer,
    number,
    regime,
)

STUDY = Study(
    name="depth",
    title="Depth transfer",
    question=(
        "Is Depth-muP (branch multiplier 1/sqrt(2L) and LR factor sqrt(d0/d)) what makes the "
        "LR transfer across depth (docs/method.md §1.3)?"
    ),
    design=(
        "LR curves in absolute LR (no LR factor applied) at three depths of fixed width, "
        "with and without the branch multiplier. Each arm's optimum against depth gives "
        "an implied depth exponent: with the multiplier, the sqrt(d0/d) LR factor predicts "
        "-0.5; without Depth-muP at all, transfer means 0. The two rules are read "
        "separately from the same grid."
    ),
    arms=(
        Arm(
            "depth",
            "Depth",
            "model.depth_mup",
            {"True": "with branch multiplier", "False": "without branch multiplier"},
            shared=(SharedCurve((("model.depth_mup", True), ("model.depth", BASE)), *BASE_CURVE),),
        ),
    ),
    scale_key="model.depth",
)

CLAIMS: tuple[Claim, ...] = (
    Claim(
        "depth_rule",
        "3 (LR factor sqrt(d0/d) with the branch multiplier)",
        "With the 1/sqrt(2L) branch multiplier, the optimal LR scales as sqrt(d0/d)",
        "optimal LR at the deepest model over the shallowest, divided by the rule's factor",
        transfer_region(),
        "Depth-muP transfers the LR across d8-d24",
        "depth",
    ),
    Claim(
        "depth_without",
        "3 (without Depth-muP the LR does not transfer)",
        "Without Depth-muP (no multiplier, no LR factor) the optimal LR moves with depth",
        "optimal LR at the deepest model over the shallowest, without the multiplier",
        Region(1 / threshold("drift"), threshold("drift"), outside=True),
        "Depth-muP is still necessary",
        "depth",
    ),
)


def analyze(runner: Runner, figures: Path, seed: int) -> StudyResult:
    with_multiplier, without = "with branch multiplier", "without branch multiplier"
    result, samples, drifts = lr_transfer(
        runner,
        figures,
        seed,
        STUDY,
        "depth",
        lambda c: curve_scale(c, "model.depth"),
        {with_multiplier: -0.5},
    )
    inside = regime(result.records)["inside"]
    result.claims.append(drift_claim("depth_rule", drifts, with_multiplier, inside))
    result.claims.append(drift_claim("depth_without", drifts, without, inside))
    # The loss the multiplier buys at the deepest model (independent bootstrap per arm).
    if with_multiplier in samples and without in samples:
        deepest = {
            v: max(samples[v], key=lambda m: curve_scale(m[0], "model.depth")) for v in samples
        }
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
