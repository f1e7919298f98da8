"""Width transfer: one base LR for every width, for each head rule (and the baselines)."""

from __future__ import annotations

from pathlib import Path

from hyperp.reproduce.catalogue import (
    HYPERP_HEADS,
    Arm,
    Claim,
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
    name="width",
    title="Width transfer",
    question="Does one base LR serve every width (docs/method.md §1.1), for each head rule?",
    design=(
        "LR curves at three widths (fixed depth, tokens and batch). HyperP with the three "
        "head rules: the paper's fixed head (0.02 at every width), the inverse-width head "
        "(0.02 x n0/n, n0 = 1024), and the logit-scale head (0.02 x sqrt(n0/n), which holds "
        "the initial logit std 0.02 x sqrt(n) at the paper's 0.64). Baselines: Muon with "
        "its decay tuned at the base scale; AdamW with muP width scaling (matrix LR x "
        "n0/n) and warmup."
    ),
    arms=(
        Arm("width_hyperp", "HyperP", "model.head_init_rule", HYPERP_HEADS),
        Arm("width_muon", "Muon", derived=("muon_decay", "muon_logit_multiplier")),
        Arm("width_adamw", "AdamW (muP)"),
    ),
    scale_key="model.width",
)

CLAIMS: tuple[Claim, ...] = (
    *(
        Claim(
            f"width_{rule}",
            f"1 (width, {label.split(', ')[1]})",
            f"HyperP's optimal LR transfers across width ({label.split(', ')[1]})",
            "optimal LR at the widest model over the narrowest (log-log fit through all widths)",
            transfer_region(),
            "one base LR for every width",
            "width",
        )
        for rule, label in HYPERP_HEADS.items()
    ),
)


def analyze(runner: Runner, figures: Path, seed: int) -> StudyResult:
    result, _, drifts = lr_transfer(
        runner, figures, seed, STUDY, "width", lambda c: curve_scale(c, "model.width"), {}
    )
    inside = regime(result.records)["inside"]
    for rule, label in HYPERP_HEADS.items():
        result.claims.append(drift_claim(f"width_{rule}", drifts, label, inside))
    return result
