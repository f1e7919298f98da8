"""The vocabulary of the studies and the thresholds behind every verdict (docs/method.md §1).

A study (:class:`Study`, its sweep files as :class:`Arm` s) and its claims (:class:`Claim`: the
number each is judged by, the :class:`Region` it must lie in, whether it depends on the training
regime) are data, written in the study's own module under :mod:`hyperp.reproduce.studies`
before any run; the thresholds those regions use are here, in one place. Nothing here or there
is adjusted after seeing results.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "BASE",
    "BASE_CURVE",
    "HYPERP_HEADS",
    "PAPER_REGIME",
    "PRIMARY_HEAD",
    "THRESHOLDS",
    "Arm",
    "Claim",
    "LRSource",
    "Region",
    "SharedCurve",
    "Study",
    "matches",
    "threshold",
    "transfer_region",
]

# The thresholds behind every verdict, with what each means (printed at the top of the report).
THRESHOLDS: dict[str, tuple[float, str]] = {
    "drift": (
        1.3,
        "an optimal LR transfers when it moves by at most this factor, either way, across the "
        "scales studied (for a rule such as sqrt(d0/d): after dividing by the rule's own factor)",
    ),
    "token_exponent": (0.15, "a token exponent agrees with the paper's -0.32 within this"),
    "loss": (0.02, "nats: a loss difference smaller than this is no difference"),
    "rms_flat": (1.25, "an RMS is independent of k when its largest/smallest ratio is below this"),
    "growth": (2.0, "a stability indicator is bounded when it grows less than this factor"),
    "outliers_pct": (1.0, "activation outliers are bounded below this share of elements (%)"),
    "leverage": (1.0, "HyperP needs less compute than Muon when its leverage is above this"),
    "width_exponent": (
        math.log(1.3) / math.log(4),
        "an exponent of the optimal LR against width counts as no drift within this of 0 (and "
        "a change of exponent as a change beyond it): the exponent that moves the LR by the "
        "drift threshold over the width study's 4x range",
    ),
    "regime_tokens_per_param": (
        50 / 3,
        "a study is inside the paper's regime when its median run trains on at least this many "
        "tokens per parameter (a third of the paper's ~50) ...",
    ),
    "regime_steps": (1000, "... and for at least this many steps"),
}


def threshold(name: str) -> float:
    return THRESHOLDS[name][0]


# The paper's setting (docs/method.md §1, §4): d8..d24 models, ~50 tokens per parameter, batches of
# 2^21 tokens, so about 5,000 steps at the base.
PAPER_REGIME: dict[str, Any] = {
    "params": "0.4-5B (d8-d24)",
    "tokens_per_param": "about 50 (its token study: 23-370)",
    "steps": "5,000 or more",
}


@dataclass(frozen=True)
class Region:
    """Where a claim's number must lie for the claim to hold: ``[low, high]``, or outside it
    when ``outside`` is set."""

    low: float = -math.inf
    high: float = math.inf
    outside: bool = False

    def contains(self, low: float, high: float) -> bool:
        """The whole interval lies where the claim holds."""
        if self.outside:
            return high < self.low or low > self.high
        return low >= self.low and high <= self.high

    def excludes(self, low: float, high: float) -> bool:
        """The whole interval lies where the claim fails."""
        if self.outside:
            return low >= self.low and high <= self.high
        return high < self.low or low > self.high

    def describe(self) -> str:
        def number(value: float) -> str:
            return f"{value:.3g}"

        if math.isinf(self.low) and math.isinf(self.high):
            return "anywhere"
        if self.outside:
            return f"outside [{number(self.low)}, {number(self.high)}]"
        if math.isinf(self.high):
            return f"above {number(self.low)}"
        if math.isinf(self.low):
            return f"below {number(self.high)}"
        return f"within [{number(self.low)}, {number(self.high)}]"


@dataclass(frozen=True)
class Claim:
    """One verdict: the paper's statement, the number that judges it, and where it must lie."""

    key: str
    label: str  # the claim's number in docs/method.md §1 and what part of it
    statement: str
    quantity: str
    region: Region
    paper: str
    study: str
    regime_sensitive: bool = True


@dataclass(frozen=True)
class LRSource:
    """Where a compute arm's base LR comes from: the fitted optimum of another arm's curve at
    the compute base (its cell values ``where``), e.g. the width study's base-width curve."""

    stem: str
    where: tuple[tuple[str, Any], ...] = ()


# In a pattern, the value of a key in the size's base model (studies/<size>/base.toml).
BASE = "base"


def matches(values: dict[str, Any], pattern: tuple[tuple[str, Any], ...]) -> bool:
    return all(values.get(key) == value for key, value in pattern)


@dataclass(frozen=True)
class SharedCurve:
    """The curve of an arm matching ``pattern`` is the curve of arm ``stem`` matching
    ``where`` (values may be ``BASE``): the same runs serve both studies."""

    pattern: tuple[tuple[str, Any], ...]
    stem: str
    where: tuple[tuple[str, Any], ...]


# The base model's own LR curve (the logit-scale head at the base width): the depth study's
# base-depth curve with the multiplier, and the batch study's base batch, are the same runs.
BASE_CURVE = ("width_hyperp", (("model.head_init_rule", "logit_scale"), ("model.width", BASE)))


@dataclass(frozen=True)
class Arm:
    """One sweep file of a study. Its runs split into curves by every axis except the LR and
    the seed; ``variant_key`` names the axis whose values are separate variants (``labels``),
    and ``derived`` lists settings the runner adds from other studies' results:

    - ``muon_decay``: the Muon baseline's weight decay, tuned at the base scale (the weight
      decay study's best value), as the paper tunes its baseline;
    - ``muon_logit_multiplier``: the Muon baseline's output-logit multiplier ``d0/d``
      (docs/method.md §2.5), set explicitly per depth.

    A compute arm has ``lr_source`` and trains at the base LRs ``optimum * sqrt(2)^step`` for
    each step in ``bracket`` (0 alone: the transferred LR only). Curves matching one of
    ``skip`` (pairs of key and value) are not run: another curve is the same function. A curve
    matching a pattern of ``shared`` is another arm's curve (same model, LRs, seeds and
    trajectory), read from that arm's directory instead of trained again. ``lr_key`` names
    the arm's LR axis when it is not its study's (e.g. the head's own LR).
    """

    stem: str
    label: str
    variant_key: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    derived: tuple[str, ...] = ()
    lr_source: LRSource | None = None
    bracket: tuple[int, ...] = ()
    skip: tuple[tuple[tuple[str, Any], ...], ...] = ()
    shared: tuple[SharedCurve, ...] = ()
    lr_key: str | None = None

    def skips(self, values: dict[str, Any]) -> bool:
        return any(matches(values, pattern) for pattern in self.skip)

    def variant(self, value: Any) -> str:
        if self.variant_key is None:
            return self.label
        return self.labels.get(str(value), f"{self.label}, {value}")


@dataclass(frozen=True)
class Study:
    name: str
    title: str
    question: str
    design: str
    arms: tuple[Arm, ...]
    scale_key: str | None  # the axis each claim compares curves along
    lr_key: str = "optim.lr"
    reads: str | None = None  # a study that analyses another study's runs (stability)
    on_request: bool = False  # a diagnosis beyond the paper's claims: runs only when named


HYPERP_HEADS = {
    "fixed": "HyperP, fixed head",
    "inverse_width": "HyperP, inverse-width head",
    "logit_scale": "HyperP, logit-scale head",
}
# The head that holds the paper's initial logit scale (0.02 * sqrt(1024) = 0.64) at every width:
# decided before any run as the "HyperP" of the compute and stability studies; the other two
# heads are reported beside it wherever the head matters.
PRIMARY_HEAD = "logit_scale"


def transfer_region() -> Region:
    limit = threshold("drift")
    return Region(1 / limit, limit)
