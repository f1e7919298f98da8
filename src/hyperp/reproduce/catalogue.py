"""The studies and the paper's claims they test, as data (docs/method.md §1).

Everything a verdict depends on is written here before any run: which sweep files make up a
study (``studies/<size>/<stem>.toml``), which number each claim is judged by, the region that
number must lie in for the claim to hold, and whether the claim depends on the training regime.
Nothing here is adjusted after seeing results.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "BASE",
    "CLAIMS",
    "PAPER_REGIME",
    "STUDIES",
    "THRESHOLDS",
    "Arm",
    "Claim",
    "LRSource",
    "Region",
    "SharedCurve",
    "Study",
    "claims_of",
    "matches",
    "study",
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
    trajectory), read from that arm's directory instead of trained again.
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


HYPERP_HEADS = {
    "fixed": "HyperP, fixed head",
    "inverse_width": "HyperP, inverse-width head",
    "logit_scale": "HyperP, logit-scale head",
}
# The head that holds the paper's initial logit scale (0.02 * sqrt(1024) = 0.64) at every width:
# decided before any run as the "HyperP" of the compute and stability studies; the other two
# heads are reported beside it wherever the head matters.
PRIMARY_HEAD = "logit_scale"

STUDIES: tuple[Study, ...] = (
    Study(
        name="weight_decay",
        title="Weight decay",
        question="Does weight decay change MuonH's result (docs/method.md §1.2), and Muon's?",
        design=(
            "On the fixed-radius sphere, decay followed by the retraction is the same step "
            "scaled by 1/(1 - lr*decay): a no-op by construction, not by experiment. The MuonH "
            "arm therefore checks the code, not the claim. The claim's content is the contrast "
            "with Muon, whose independent decay shrinks the weights: its result depends on the "
            "decay, which must be tuned. LR curves at each decay value, at the base scale; "
            "Muon's best decay here is the decay every other Muon run uses."
        ),
        arms=(Arm("wd_hyperp", "MuonH (HyperP)"), Arm("wd_muon", "Muon")),
        scale_key="optim.weight_decay",
    ),
    Study(
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
    ),
    Study(
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
                shared=(
                    SharedCurve((("model.depth_mup", True), ("model.depth", BASE)), *BASE_CURVE),
                ),
            ),
        ),
        scale_key="model.depth",
    ),
    Study(
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
    ),
    Study(
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
    ),
    Study(
        name="moe",
        title="Mixture of experts",
        question=(
            "Does the optimum transfer across the number of active experts k with SqrtGate, and "
            "does SqrtGate keep the MoE output RMS independent of k (docs/method.md §1.1, §1.7)? Is a "
            "load-balancing weight of 0.1 tolerated?"
        ),
        design=(
            "LR curves at k = 1, 2, 4 (sparsity 2) with SqrtGate and with the plain softmax "
            "gate (k = 1 is the same function under both gates: one curve serves both). The "
            "MoE branch RMS at initialization from the same runs. Three balance weights at one "
            "LR, several seeds."
        ),
        arms=(
            Arm(
                "moe",
                "MoE",
                "model.moe_sqrt_gate",
                {"True": "SqrtGate", "False": "softmax gate"},
                skip=((("model.moe_sqrt_gate", False), ("model.moe_granularity", 1)),),
            ),
            Arm("moe_balance", "balance weight"),
        ),
        scale_key="model.moe_granularity",
    ),
    Study(
        name="compute",
        title="Compute leverage",
        question=(
            "Does HyperP reach Muon's loss with less compute, each method at its own "
            "transferred LR (docs/method.md §1.5)?"
        ),
        design=(
            "Three Chinchilla-style scales (width and tokens grow with depth), several seeds "
            "per point. Each method's base LR is the optimum fitted at the base model (the "
            "width study's base-width curve; Muon with its tuned decay), transferred by the "
            "method's own rule, and bracketed by x/÷ sqrt(2) at every scale. Leverage is read by "
            "local interpolation between measured points (no curve fit decides it), at the "
            "transferred LR and at the best LR of each bracket; seeds pair the runs of the two "
            "methods. The other two HyperP heads run at their transferred LR."
        ),
        arms=(
            Arm(
                "compute_hyperp",
                HYPERP_HEADS[PRIMARY_HEAD],
                lr_source=LRSource("width_hyperp", (("model.head_init_rule", PRIMARY_HEAD),)),
                bracket=(-1, 0, 1),
            ),
            Arm(
                "compute_muon",
                "Muon",
                derived=("muon_decay", "muon_logit_multiplier"),
                lr_source=LRSource("width_muon"),
                bracket=(-1, 0, 1),
            ),
            Arm(
                "compute_hyperp_fixed",
                HYPERP_HEADS["fixed"],
                lr_source=LRSource("width_hyperp", (("model.head_init_rule", "fixed"),)),
                bracket=(0,),
            ),
            Arm(
                "compute_hyperp_inverse",
                HYPERP_HEADS["inverse_width"],
                lr_source=LRSource("width_hyperp", (("model.head_init_rule", "inverse_width"),)),
                bracket=(0,),
            ),
        ),
        scale_key="model.depth",
        lr_key="optim.base_lr",
    ),
    Study(
        name="stability",
        title="Stability",
        question="Do the stability indicators stay bounded as the model grows (docs/method.md §1.6)?",
        design=(
            "The indicators the compute runs logged (attention Z-value, branch output RMS, "
            "activation outliers), at the transferred LR, seeds pooled: each one's growth from "
            "the smallest to the largest scale."
        ),
        arms=(),
        scale_key="model.depth",
        reads="compute",
    ),
)


def study(name: str) -> Study:
    for item in STUDIES:
        if item.name == name:
            return item
    raise ValueError(f"unknown study {name!r}; choose from {', '.join(s.name for s in STUDIES)}")


def _transfer_region() -> Region:
    limit = threshold("drift")
    return Region(1 / limit, limit)


CLAIMS: tuple[Claim, ...] = (
    Claim(
        "decay_sphere",
        "2 (decay on the sphere: code check)",
        "Weight decay is a no-op for MuonH",
        "loss at the largest decay minus at no decay, MuonH, paired run by run (same LR and "
        "seed) over the LRs around the optimum",
        Region(-threshold("loss"), threshold("loss")),
        "a first-order no-op, so decay is dropped",
        "weight_decay",
        regime_sensitive=False,
    ),
    Claim(
        "decay_muon",
        "2 (decay matters for Muon)",
        "Unlike MuonH, Muon's result depends on its weight decay, which must be tuned",
        "optimal loss at no decay minus at Muon's best decay",
        Region(threshold("loss"), math.inf),
        "Muon is tuned with decay; HyperP drops it",
        "weight_decay",
    ),
    *(
        Claim(
            f"width_{rule}",
            f"1 (width, {label.split(', ')[1]})",
            f"HyperP's optimal LR transfers across width ({label.split(', ')[1]})",
            "optimal LR at the widest model over the narrowest (log-log fit through all widths)",
            _transfer_region(),
            "one base LR for every width",
            "width",
        )
        for rule, label in HYPERP_HEADS.items()
    ),
    Claim(
        "depth_rule",
        "3 (LR factor sqrt(d0/d) with the branch multiplier)",
        "With the 1/sqrt(2L) branch multiplier, the optimal LR scales as sqrt(d0/d)",
        "optimal LR at the deepest model over the shallowest, divided by the rule's factor",
        _transfer_region(),
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
    Claim(
        "token_exponent",
        "4 (token exponent)",
        "The optimal LR falls with the token budget as T^-0.32",
        "exponent b of lr* = a T^b (log-log fit through all budgets)",
        Region(-0.32 - threshold("token_exponent"), -0.32 + threshold("token_exponent")),
        "-0.32 (Table 4, d8, 10-166B tokens)",
        "tokens",
    ),
    Claim(
        "batch_rule",
        "1 (batch rule (B/B0)^0.5)",
        "At a fixed token budget the optimal LR scales as sqrt(B/B0)",
        "optimal LR at the largest batch over the smallest, divided by the rule's factor",
        _transfer_region(),
        "the batch rule with exponent 0.5",
        "batch",
    ),
    Claim(
        "moe_transfer",
        "1 (MoE granularity, SqrtGate)",
        "With SqrtGate the optimal LR transfers across the number of active experts k",
        "optimal LR at the largest k over k = 1 (log-log fit through all k), SqrtGate",
        _transfer_region(),
        "no factor for sparsity or granularity: SqrtGate carries it",
        "moe",
    ),
    Claim(
        "sqrt_gate_rms",
        "7a (SqrtGate output RMS)",
        "SqrtGate keeps the MoE output RMS independent of k",
        "largest over smallest MoE branch RMS across k at initialization, SqrtGate",
        Region(-math.inf, threshold("rms_flat")),
        "RMS independent of k",
        "moe",
        regime_sensitive=False,
    ),
    Claim(
        "balance_weight",
        "7b (balance weight 0.1)",
        "A load-balancing weight of 0.1 is tolerated",
        "loss at weight 0.1 minus at weight 0.001 (paired by seed)",
        Region(-math.inf, threshold("loss")),
        "0.1 tolerated, with good balance",
        "moe",
    ),
    Claim(
        "leverage_transferred",
        "5 (compute leverage, transferred LR)",
        "HyperP reaches Muon's loss with less compute",
        "HyperP's compute leverage at Muon's largest scale, each at its transferred LR",
        Region(threshold("leverage"), math.inf),
        "1.58x at 6e21 FLOPs (d24)",
        "compute",
    ),
    Claim(
        "leverage_best",
        "5 (compute leverage, best of bracket)",
        "HyperP reaches Muon's loss with less compute, each at its best bracketed LR",
        "HyperP's compute leverage at Muon's largest scale, each at the best LR of its bracket",
        Region(threshold("leverage"), math.inf),
        "1.58x at 6e21 FLOPs (d24)",
        "compute",
    ),
    Claim(
        "attn_z_growth",
        "6 (attention Z-value)",
        "The attention Z-value stays bounded with scale",
        "final attention Z-value at the largest scale over the smallest, HyperP",
        Region(-math.inf, threshold("growth")),
        "bounded, not growing with scale",
        "stability",
    ),
    Claim(
        "branch_rms_growth",
        "6 (branch output RMS)",
        "The branch output RMS stays bounded with scale",
        "final branch output RMS at the largest scale over the smallest, HyperP",
        Region(-math.inf, threshold("growth")),
        "bounded, not growing with scale",
        "stability",
    ),
    Claim(
        "outliers",
        "6 (activation outliers)",
        "Activation outliers stay rare at scale",
        "final share of outlier activations at the largest scale (%), HyperP",
        Region(-math.inf, threshold("outliers_pct")),
        "bounded",
        "stability",
    ),
)


def claims_of(study_name: str) -> list[Claim]:
    return [claim for claim in CLAIMS if claim.study == study_name]
