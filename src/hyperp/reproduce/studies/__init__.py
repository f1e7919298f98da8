"""The studies, one module each, in the order they run (later ones use earlier results).

Each module holds its catalogue entry (``STUDY``: question, design, sweep files), its claims
(``CLAIMS``: the number each is judged by and the region it must lie in, fixed before any run)
and its measures (``analyze``: runs to numbers, intervals and verdicts). :mod:`.common` holds
what they share.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from hyperp.reproduce.catalogue import Claim, Study
from hyperp.reproduce.runner import Runner
from hyperp.reproduce.studies import (
    batch,
    compute,
    depth,
    moe,
    stability,
    tokens,
    weight_decay,
    width,
    width_pairs,
    width_roles,
    width_tokens,
)
from hyperp.reproduce.studies.common import StudyResult

__all__ = ["ANALYZERS", "CLAIMS", "STUDIES", "StudyResult", "claims_of", "study"]

_MODULES = (
    weight_decay,
    width,
    depth,
    tokens,
    batch,
    moe,
    compute,
    stability,
    width_roles,
    width_tokens,
    width_pairs,
)

STUDIES: tuple[Study, ...] = tuple(module.STUDY for module in _MODULES)
CLAIMS: tuple[Claim, ...] = tuple(claim for module in _MODULES for claim in module.CLAIMS)
ANALYZERS: dict[str, Callable[[Runner, Path, int], StudyResult]] = {
    module.STUDY.name: module.analyze for module in _MODULES
}


def study(name: str) -> Study:
    for item in STUDIES:
        if item.name == name:
            return item
    raise ValueError(f"unknown study {name!r}; choose from {', '.join(s.name for s in STUDIES)}")


def claims_of(study_name: str) -> list[Claim]:
    return [claim for claim in CLAIMS if claim.study == study_name]
