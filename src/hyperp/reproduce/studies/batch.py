"""Batch size: the batch rule (B/B0)^0.5 at a fixed token budget."""

from __future__ import annotations

from pathlib import Path

from hyperp.reproduce.catalogue import (
    BASE,
    BASE_CURVE,
    Arm,
    Claim,
    SharedCurve,
    Study,
    transfer_region,
)
from hyperp.reproduce.runner import Runner
from hyperp.reproduce.studies.common import (
    StudyResult,
    curve_scale,
    drift_claim,
    lr_transfer,
    regime,
)

STUDY = Study(
    name="batch",
    title="Batch size",
    question="Does the optimal LR follow the batch rule (B/B0)^0.5 (docs/method.md §4)?",
    design=(
        "LR curves (absolute LR) at three batch sizes with the same token budget, so the "
        "steps fall as the batch grows. The rule predicts an exponent of 0.5."
    ),
    arms=(
        Arm(
            "batch",
            "HyperP",
            shared=(SharedCurve((("train.batch_size", BASE),), *BASE_CURVE),),
        ),
    ),
    scale_key="train.batch_size",
)

CLAIMS: tuple[Claim, ...] = (
    Claim(
        "batch_rule",
        "1 (batch rule (B/B0)^0.5)",
        "At a fixed token budget the optimal LR scales as sqrt(B/B0)",
        "optimal LR at the largest batch over the smallest, divided by the rule's factor",
        transfer_region(),
        "the batch rule with exponent 0.5",
        "batch",
    ),
)


def analyze(runner: Runner, figures: Path, seed: int) -> StudyResult:
    result, _, drifts = lr_transfer(
        runner,
        figures,
        seed,
        STUDY,
        "batch size (sequences)",
        lambda c: curve_scale(c, "train.batch_size"),
        {"HyperP": 0.5},
    )
    inside = regime(result.records)["inside"]
    result.claims.append(drift_claim("batch_rule", drifts, "HyperP", inside))
    return result
