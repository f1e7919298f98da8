"""Three-way verdicts from an interval and a region fixed in advance (see ``catalogue``).

A claim *holds* when the 95% interval of its number lies inside the region where the claim is
true, is *contradicted* when the interval lies entirely outside it, and is otherwise *not
resolved at this scale*. A study far from the paper's training regime says so: a contradiction
there is "outside the paper's regime", not a failure of the paper's claim.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from hyperp.reproduce.catalogue import Claim, Region

__all__ = ["CONTRADICTED", "HOLDS", "NOT_RESOLVED", "Verdict", "judge"]

HOLDS = "holds"
CONTRADICTED = "contradicted"
NOT_RESOLVED = "not resolved"


@dataclass(frozen=True)
class Verdict:
    outcome: str  # HOLDS, CONTRADICTED or NOT_RESOLVED
    inside_regime: bool  # the study ran inside the paper's regime (or the claim ignores regime)
    text: str  # the verdict as the report states it

    @property
    def resolved(self) -> bool:
        """A result at this scale that also speaks to the paper's claim."""
        return self.outcome != NOT_RESOLVED and self.inside_regime

    def to_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "inside_regime": self.inside_regime,
            "resolved": self.resolved,
            "text": self.text,
        }


def outcome(estimate: float, interval: tuple[float, float], region: Region) -> str:
    """HOLDS, CONTRADICTED or NOT_RESOLVED for an estimate with its interval."""
    low, high = interval
    if not all(math.isfinite(v) for v in (estimate, low, high)):
        return NOT_RESOLVED
    if region.contains(low, high):
        return HOLDS
    if region.excludes(low, high):
        return CONTRADICTED
    return NOT_RESOLVED


def judge(
    claim: Claim,
    estimate: float,
    interval: tuple[float, float],
    *,
    inside_regime: bool,
    missing: str | None = None,
) -> Verdict:
    """The verdict on ``claim`` from its number; ``missing`` says why there is no number."""
    regime_ok = inside_regime or not claim.regime_sensitive
    if missing is not None:
        return Verdict(NOT_RESOLVED, regime_ok, f"not resolved at this scale ({missing})")
    result = outcome(estimate, interval, claim.region)
    if result == NOT_RESOLVED:
        return Verdict(result, regime_ok, "not resolved at this scale")
    if regime_ok:
        return Verdict(result, True, result)
    if result == HOLDS:
        return Verdict(result, False, "holds at this scale (outside the paper's regime)")
    return Verdict(result, False, "outside the paper's regime (contradicted at this scale)")
