"""Coordinate check for our parameterization (``hyperp check``).

Train a few steps at several widths (and depths) on simple synthetic data and record each
layer's activation RMS: attention and MLP branch outputs (after the Depth-muP multiplier), the
residual stream after each block, and the output logits. Under a parameterization whose
hyperparameters transfer, these curves are flat in width; under standard parameterization with
AdamW at a fixed learning rate they grow with width (the updates' effect on activations scales
with fan-in). Flatness is judged by the least-squares slope of ``log RMS`` against
``log width``: a slope of ``s`` means the quantity changes by ``(w_max/w_min)^s`` over the range.

Methods: ``hyperp`` (MuonH/AdamH/Adam), ``muon`` and ``adamw`` (the baselines of docs/method.md §2.5,
through ``hyperp.optim.build_optimizer``) and ``sp-adamw``: standard parameterization, one
``torch.optim.AdamW`` for everything and no Depth-muP multiplier, the reference for "not flat".
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch

import hyperp.monitor
from hyperp.fileio import atomic_write
from hyperp.model.config import ModelConfig
from hyperp.model.transformer import Transformer
from hyperp.rules import muon_logit_multiplier

__all__ = [
    "DEFAULT_LR",
    "FLAT_SLOPE_TOLERANCE",
    "METHODS",
    "CoordCheckResult",
    "coord_check",
    "fit_slope",
    "markov_batches",
    "method_optimizer",
]

METHODS = ("hyperp", "muon", "adamw", "sp-adamw")
DEFAULT_LR = {"hyperp": 0.02, "muon": 0.02, "adamw": 0.01, "sp-adamw": 0.01}
# |slope of log RMS vs log width| below which a curve counts as flat. 0.2 allows a 1.32x drift
# over a 4x width range; measured slopes are about 0.1 or less under HyperP at widths 32-128
# (the residual seed-to-seed and finite-width variation of a few-step run) and 0.5-1 under
# SP AdamW, so the threshold separates the two with margin on both sides.
FLAT_SLOPE_TOLERANCE = 0.2
_QUANTITIES = ("attn_branch_rms", "mlp_branch_rms", "residual_rms")


def markov_batches(
    vocab_size: int, batch: int, length: int, steps: int, *, seed: int = 0, branching: int = 4
) -> list[torch.Tensor]:
    """Token batches from a fixed random Markov chain (each token has ``branching`` equally
    likely successors): learnable structure without any data files."""
    generator = torch.Generator().manual_seed(seed)
    successors = torch.randint(0, vocab_size, (vocab_size, branching), generator=generator)
    batches = []
    for _ in range(steps):
        tokens = torch.empty(batch, length, dtype=torch.long)
        tokens[:, 0] = torch.randint(0, vocab_size, (batch,), generator=generator)
        choice = torch.randint(0, branching, (batch, length), generator=generator)
        for position in range(1, length):
            tokens[:, position] = successors[tokens[:, position - 1], choice[:, position]]
        batches.append(tokens)
    return batches


@dataclass
class CoordCheckResult:
    """Activation RMS per (depth, width, step, quantity); quantities are ``name/layer`` for the
    per-layer ones and ``logits_rms``; ``loss`` holds the training loss per step."""

    method: str
    lr: float
    steps: int
    widths: list[int]
    depths: list[int]
    records: list[dict] = field(default_factory=list)

    def values(self, depth: int, step: int) -> dict[str, dict[int, float]]:
        """quantity -> {width: RMS} at ``step`` for one depth."""
        table: dict[str, dict[int, float]] = defaultdict(dict)
        for record in self.records:
            if record["depth"] == depth and record["step"] == step:
                table[record["quantity"]][record["width"]] = record["value"]
        return dict(table)

    def slopes(self, step: int | None = None) -> dict[tuple[int, str], float]:
        """Least-squares slope of log RMS against log width, per (depth, quantity)."""
        step = self.steps if step is None else step
        out = {}
        for depth in self.depths:
            for quantity, by_width in self.values(depth, step).items():
                if quantity == "loss" or len(by_width) < 2:
                    continue
                widths = sorted(by_width)
                out[(depth, quantity)] = fit_slope(
                    [math.log(w) for w in widths], [math.log(by_width[w]) for w in widths]
                )
        return out

    def depth_slopes(self, step: int | None = None) -> dict[int, float]:
        """Per width, the slope of log RMS of the last block's residual stream against log
        depth (Depth-muP keeps it near 0); empty with fewer than two depths."""
        step = self.steps if step is None else step
        if len(self.depths) < 2:
            return {}
        out = {}
        for width in self.widths:
            points = []
            for depth in self.depths:
                last = self.values(depth, step).get(f"residual_rms/{depth - 1}", {})
                if width in last:
                    points.append((math.log(depth), math.log(last[width])))
            if len(points) >= 2:
                out[width] = fit_slope([p[0] for p in points], [p[1] for p in points])
        return out

    def not_flat(
        self, tolerance: float = FLAT_SLOPE_TOLERANCE, *, include_logits: bool = True
    ) -> dict[tuple[int, str], float]:
        """The (depth, quantity) curves whose |slope| exceeds ``tolerance`` at the last step."""
        return {
            key: slope
            for key, slope in self.slopes().items()
            if abs(slope) > tolerance and (include_logits or key[1] != "logits_rms")
        }

    def table(self) -> str:
        """Text table: one row per (depth, quantity), RMS per width at the last step, slope."""
        lines = [
            f"coordinate check: method {self.method}, lr {self.lr:g}, {self.steps} steps; "
            f"activation RMS after the last step, slope = d log RMS / d log width "
            f"(flat: |slope| <= {FLAT_SLOPE_TOLERANCE})"
        ]
        header = f"{'depth':>5}  {'quantity':<22}" + "".join(
            f"{'w=' + str(w):>11}" for w in self.widths
        )
        lines.append(header + f"{'slope':>9}  flat")
        slopes = self.slopes()
        for depth in self.depths:
            values = self.values(depth, self.steps)
            for quantity in _ordered(values):
                row = f"{depth:>5}  {quantity:<22}"
                row += "".join(
                    f"{values[quantity][w]:>11.4g}" if w in values[quantity] else f"{'-':>11}"
                    for w in self.widths
                )
                slope = slopes.get((depth, quantity))
                if slope is not None:
                    flat = "yes" if abs(slope) <= FLAT_SLOPE_TOLERANCE else "NO"
                    if quantity == "logits_rms" and flat == "NO" and self.method == "hyperp":
                        # At init the logit RMS is head_std * sqrt(width); which way it drifts
                        # depends on the head-init width rule (docs/method.md §3), not on the optimizer.
                        flat = "no: set by the head-init width rule (docs/method.md §3)"
                    row += f"{slope:>9.3f}  {flat}"
                lines.append(row)
        depth_slopes = self.depth_slopes()
        if depth_slopes:
            lines.append(
                "last block's residual RMS against depth (slope of log RMS vs log depth): "
                + ", ".join(f"w={w}: {slope:.3f}" for w, slope in depth_slopes.items())
            )
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "lr": self.lr,
            "steps": self.steps,
            "widths": self.widths,
            "depths": self.depths,
            "tolerance": FLAT_SLOPE_TOLERANCE,
            "slopes": [
                {"depth": depth, "quantity": quantity, "slope": slope}
                for (depth, quantity), slope in self.slopes().items()
            ],
            "depth_slopes": {str(w): slope for w, slope in self.depth_slopes().items()},
            "records": self.records,
        }

    def plot(self, path: str) -> None:
        """RMS against width (log-log), one panel per quantity kind, one line per layer."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        kinds = [*_QUANTITIES, "logits_rms"]
        figure, axes = plt.subplots(1, len(kinds), figsize=(4 * len(kinds), 3.6), squeeze=False)
        for axis, kind in zip(axes[0], kinds):
            plotted: list[float] = []
            for depth in self.depths:
                values = self.values(depth, self.steps)
                for quantity in _ordered(values):
                    if quantity.split("/")[0] != kind:
                        continue
                    widths = sorted(values[quantity])
                    label = f"d{depth}" + (f" L{quantity.split('/')[1]}" if "/" in quantity else "")
                    ys = [values[quantity][w] for w in widths]
                    plotted.extend(ys)
                    axis.plot(widths, ys, marker="o", label=label)
            axis.set_xscale("log", base=2)
            axis.set_yscale("log")
            if plotted and min(plotted) > 0:
                # Show at least one decade so that small wiggles do not look like trends.
                low, high = min(plotted), max(plotted)
                center = math.sqrt(low * high)
                axis.set_ylim(min(low, center / 10**0.5) / 1.1, max(high, center * 10**0.5) * 1.1)
            axis.set_xlabel("width")
            axis.set_title(kind)
            axis.legend(fontsize=6)
        axes[0][0].set_ylabel(f"RMS after {self.steps} steps")
        figure.suptitle(f"coordinate check: {self.method}, lr {self.lr:g}")
        figure.tight_layout()
        image_format = os.path.splitext(path)[1].lstrip(".") or "png"
        try:
            atomic_write(path, lambda handle: figure.savefig(handle, format=image_format, dpi=120))
        finally:
            plt.close(figure)


def coord_check(
    widths: Sequence[int] = (64, 128, 256),
    depths: Sequence[int] = (2,),
    *,
    method: str = "hyperp",
    lr: float | None = None,
    steps: int = 10,
    batch: int = 8,
    context: int = 64,
    vocab_size: int = 256,
    head_dim: int = 16,
    n_kv_heads: int = 2,
    seed: int = 0,
    model_overrides: dict | None = None,
    device: str = "cpu",
) -> CoordCheckResult:
    """Train ``steps`` steps at every (depth, width) and record activation RMS per layer.

    The same data and seed serve every shape; ``lr`` is the LR at the smallest depth ``d0``
    (deeper models get the method's depth rule). ``model_overrides`` are extra
    :class:`ModelConfig` fields (e.g. ``{"head_init_rule": "inverse_width"}``).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    if len(widths) < 2:
        raise ValueError("a coordinate check needs at least two widths, e.g. --widths 64 128 256")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    lr = DEFAULT_LR[method] if lr is None else lr
    result = CoordCheckResult(method, lr, steps, sorted(widths), sorted(depths))
    batches = markov_batches(vocab_size, batch, context + 1, steps + 1, seed=seed)
    for depth in result.depths:
        for width in result.widths:
            config = ModelConfig(
                depth=depth,
                width=width,
                head_dim=head_dim,
                n_kv_heads=n_kv_heads,
                vocab_size=vocab_size,
                context=context,
                depth_mup=method != "sp-adamw",
                logit_multiplier=1.0,
                **(model_overrides or {}),
            )
            if method == "muon":
                multiplier = muon_logit_multiplier(result.depths[0], depth)
                config = replace(config, logit_multiplier=multiplier)
            torch.manual_seed(seed)
            model = Transformer(config).to(device)
            optimizer = method_optimizer(model, method, lr, depth_ratio=result.depths[0] / depth)
            for step in range(steps + 1):
                tokens = batches[step].to(device)
                inputs, targets = tokens[:, :-1], tokens[:, 1:]
                if step in (0, steps):  # measure at init and after the last update
                    _measure(result, model, inputs, depth, width, step)
                if step == steps:
                    break
                loss = model(inputs, targets).loss
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                result.records.append(
                    dict(depth=depth, width=width, step=step, quantity="loss", value=loss.item())
                )
    return result


def method_optimizer(
    model: torch.nn.Module, method: str, lr: float, *, depth_ratio: float = 1.0, **options
) -> torch.optim.Optimizer:
    """The optimizer a coordinate check trains ``model`` with, ``lr`` being the LR at the base
    depth ``d0`` and ``depth_ratio = d0/d``. Depth transfer (docs/method.md §4, §2.5): HyperP and Muon
    scale the LR by sqrt(d0/d); the AdamW baseline scales matrix LRs by d0/d inside
    build_optimizer; ``sp-adamw`` is one plain AdamW. ``options`` go to build_optimizer."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    if method == "sp-adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    from hyperp.optim import build_optimizer  # the model package itself never needs it

    depth_lr = lr * math.sqrt(depth_ratio) if method in ("hyperp", "muon") else lr
    return build_optimizer(model, method=method, lr=depth_lr, depth_ratio=depth_ratio, **options)


@torch.no_grad()
def _measure(
    result: CoordCheckResult,
    model: Transformer,
    inputs: torch.Tensor,
    depth: int,
    width: int,
    step: int,
) -> None:
    with hyperp.monitor.collect(model) as stats:
        logits = model(inputs).logits
    per_layer = stats.per_layer()
    for quantity in _QUANTITIES:
        for layer, value in per_layer[quantity].items():
            result.records.append(
                dict(
                    depth=depth, width=width, step=step, quantity=f"{quantity}/{layer}", value=value
                )
            )
    logits_rms = logits.float().square().mean().sqrt().item()
    result.records.append(
        dict(depth=depth, width=width, step=step, quantity="logits_rms", value=logits_rms)
    )


def _ordered(values: dict) -> list[str]:
    def key(name: str):
        kind, _, layer = name.partition("/")
        order = [*_QUANTITIES, "logits_rms", "loss"]
        return (int(layer) if layer else 10**6, order.index(kind) if kind in order else 99)

    return sorted((q for q in values if q != "loss"), key=key)


def fit_slope(x: list[float], y: list[float]) -> float:
    """Least-squares slope of y against x."""
    mean_x, mean_y = sum(x) / len(x), sum(y) / len(y)
    numerator = sum((a - mean_x) * (b - mean_y) for a, b in zip(x, y))
    denominator = sum((a - mean_x) ** 2 for a in x)
    return numerator / denominator
