"""Width transfer role by role (diagnosis): whose optimal LR moves with width, the output
head's (AdamH) or the hidden matrices' (MuonH)?"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hyperp.reproduce.catalogue import Arm, Claim, Study, transfer_region
from hyperp.reproduce.runner import Runner
from hyperp.reproduce.studies.common import (
    StudyResult,
    curve_scale,
    drift_claim,
    lr_transfer,
    regime,
    said,
)

HEAD, OTHERS = "head LR (AdamH), other roles fixed", "other roles' LR (MuonH matrices), head fixed"

STUDY = Study(
    name="width_roles",
    title="Width transfer, role by role (diagnosis)",
    question=(
        "Where does HyperP's drift of the optimal LR with width come from: the output head's "
        "LR (AdamH) or the hidden matrices' (MuonH)?"
    ),
    design=(
        "HyperP with the logit-scale head at the width study's widths, tokens and batch. Two "
        "LR curves per width: the head's LR swept with every other role (hidden matrices with "
        "MuonH, embedding and gains with Adam) at a fixed LR, and the other roles' LR swept "
        "with the head at that same fixed LR, the base's LR, written in the sweep files before "
        "any run. Each role's optimum against width gives its own drift; a role whose optimum "
        "stays put while the other's moves is not where the drift comes from."
    ),
    arms=(
        Arm("roles_head", HEAD, lr_key="optim.head_lr"),
        Arm("roles_matrix", OTHERS),
    ),
    scale_key="model.width",
    on_request=True,
)

CLAIMS: tuple[Claim, ...] = (
    Claim(
        "roles_head",
        "1 (width, diagnosis: the head's LR)",
        "The head's optimal LR (AdamH) transfers across width, the other roles at a fixed LR",
        "the head's optimal LR at the widest model over the narrowest (log-log fit through all "
        "widths)",
        transfer_region(),
        "one base LR for every width, every role",
        "width_roles",
    ),
    Claim(
        "roles_matrix",
        "1 (width, diagnosis: the hidden matrices' LR)",
        "The hidden matrices' optimal LR (MuonH) transfers across width, the head at a fixed LR",
        "the other roles' optimal LR at the widest model over the narrowest (log-log fit "
        "through all widths)",
        transfer_region(),
        "one base LR for every width, every role",
        "width_roles",
    ),
)


def analyze(runner: Runner, figures: Path, seed: int) -> StudyResult:
    result, _, drifts = lr_transfer(
        runner, figures, seed, STUDY, "width", lambda c: curve_scale(c, "model.width"), {}
    )
    inside = regime(result.records)["inside"]
    head = drift_claim("roles_head", drifts, HEAD, inside)
    matrix = drift_claim("roles_matrix", drifts, OTHERS, inside)
    result.claims += [head, matrix]
    result.findings.append(finding(head, matrix))
    return result


def finding(head: dict[str, Any], matrix: dict[str, Any]) -> str:
    """Which role drifts, from the two verdicts (threshold: the drift's, 1.3)."""
    text = (
        f"The head's optimum, widest over narrowest, {said(head)}; the hidden matrices' "
        f"{said(matrix)}."
    )
    moves = {
        name: claim["verdict"]["outcome"] for name, claim in (("head", head), ("matrix", matrix))
    }
    if moves == {"head": "contradicted", "matrix": "holds"}:
        return text + " The drift comes from the head's LR: the hidden matrices' LR transfers."
    if moves == {"head": "holds", "matrix": "contradicted"}:
        return text + " The drift comes from the hidden matrices' LR: the head's LR transfers."
    if moves == {"head": "contradicted", "matrix": "contradicted"}:
        return text + " Both roles' optima move with width."
    if moves == {"head": "holds", "matrix": "holds"}:
        return text + (
            " Neither role's optimum moves on its own with the other held fixed: the width "
            "study's drift comes from their interplay (one shared LR for both)."
        )
    for role, other in (("head", "matrix"), ("matrix", "head")):
        if moves[role] == "contradicted" and moves[other] == "not resolved":
            names = {"head": "head's", "matrix": "hidden matrices'"}
            return text + (
                f" The {names[role]} LR moves with width; whether the {names[other]} moves too "
                "is not resolved (its interval holds both no drift and a drift past the "
                "threshold): more seeds or a finer grid for its curves."
            )
    return text + " The data do not resolve which role drifts: more seeds or a finer grid."
