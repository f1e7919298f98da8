"""Coordinate check of any ``nn.Module`` family, through forward hooks.

The model needs no cooperation: a factory ``make(width, depth) -> nn.Module`` builds each
shape, every submodule gets a forward hook for the measurement passes, and each submodule's
output RMS is recorded at init and after a few training steps. Submodules are grouped into
kinds by their names with layer indices replaced by ``*`` (``model.layers.*.mlp.down_proj``);
a kind's value is the mean over its layers. A kind is flat when the least-squares slope of
``log RMS`` against ``log width`` stays within :data:`FLAT_SLOPE_TOLERANCE` (the same verdict as
``hyperp check`` on the project's own family). The output head is shown but left out of the
verdict, since its scale follows the head-init width rule (docs/method.md §3).

Three lines for a Hugging Face config::

    from hyperp.coordinates import coord_check_module, hf_factory
    result = coord_check_module(hf_factory({"model_type": "llama", ...}), widths=(64, 128, 256))
    print(result.table()); result.plot("coord.png")
"""

from __future__ import annotations

import math
import os
import re
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from hyperp.fileio import atomic_write
from hyperp.model.coord_check import (
    DEFAULT_LR,
    FLAT_SLOPE_TOLERANCE,
    fit_slope,
    markov_batches,
    method_optimizer,
)

__all__ = ["ModuleCoordResult", "coord_check_module", "hf_factory", "kind_of"]

Factory = Callable[[int, int], nn.Module]
_LAYER_INDEX = re.compile(r"\.\d+(?=\.|$)")


def kind_of(name: str) -> str:
    """A submodule's kind: its name with layer indices replaced by ``*``."""
    return _LAYER_INDEX.sub(".*", name)


@dataclass
class ModuleCoordResult:
    """Output RMS per (depth, width, step, kind); ``loss`` records hold the training loss."""

    method: str
    lr: float
    steps: int
    widths: list[int]
    depths: list[int]
    head_kinds: list[str] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)

    def values(self, depth: int, step: int) -> dict[str, dict[int, float]]:
        """kind -> {width: RMS} at ``step`` for one depth."""
        table: dict[str, dict[int, float]] = defaultdict(dict)
        for record in self.records:
            if record["depth"] == depth and record["step"] == step and record["kind"] != "loss":
                table[record["kind"]][record["width"]] = record["value"]
        return dict(table)

    def slopes(self, step: int | None = None) -> dict[tuple[int, str], float]:
        """Slope of log RMS against log width per (depth, kind), for kinds with positive RMS."""
        step = self.steps if step is None else step
        out = {}
        for depth in self.depths:
            for kind, by_width in self.values(depth, step).items():
                widths = sorted(w for w, v in by_width.items() if v > 0)
                if len(widths) >= 2:
                    out[(depth, kind)] = fit_slope(
                        [math.log(w) for w in widths], [math.log(by_width[w]) for w in widths]
                    )
        return out

    def depth_slopes(self, step: int | None = None) -> dict[tuple[int, str], float]:
        """Slope of log RMS against log depth per (width, kind); empty with one depth."""
        step = self.steps if step is None else step
        out = {}
        if len(self.depths) < 2:
            return out
        tables = {depth: self.values(depth, step) for depth in self.depths}
        for width in self.widths:
            for kind in tables[self.depths[0]]:
                points = [
                    (math.log(d), math.log(tables[d][kind][width]))
                    for d in self.depths
                    if tables[d].get(kind, {}).get(width, 0) > 0
                ]
                if len(points) >= 2:
                    out[(width, kind)] = fit_slope([p[0] for p in points], [p[1] for p in points])
        return out

    def not_flat(self, tolerance: float = FLAT_SLOPE_TOLERANCE) -> dict[tuple[int, str], float]:
        """The (depth, kind) curves, the head's left out, whose |slope| exceeds ``tolerance``."""
        return {
            key: slope
            for key, slope in self.slopes().items()
            if abs(slope) > tolerance and key[1] not in self.head_kinds
        }

    def table(self) -> str:
        """One row per (depth, kind): RMS per width after the last step, the slope, a verdict."""
        lines = [
            f"coordinate check: method {self.method}, lr {self.lr:g}, {self.steps} steps; "
            f"output RMS per module kind after the last step, slope = d log RMS / d log width "
            f"(flat: |slope| <= {FLAT_SLOPE_TOLERANCE})"
        ]
        width_cells = "".join(f"{'w=' + str(w):>11}" for w in self.widths)
        lines.append(f"{'depth':>5}  {'kind':<40}{width_cells}{'slope':>9}  flat")
        slopes = self.slopes()
        for depth in self.depths:
            for kind, by_width in self.values(depth, self.steps).items():
                cells = "".join(
                    f"{by_width[w]:>11.4g}" if w in by_width else f"{'-':>11}" for w in self.widths
                )
                slope = slopes.get((depth, kind))
                verdict = ""
                if slope is not None:
                    verdict = f"{slope:>9.3f}  " + (
                        "head: not judged"
                        if kind in self.head_kinds
                        else "yes"
                        if abs(slope) <= FLAT_SLOPE_TOLERANCE
                        else "NO"
                    )
                lines.append(f"{depth:>5}  {kind:<40.40}{cells}{verdict}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "method": self.method,
            "lr": self.lr,
            "steps": self.steps,
            "widths": self.widths,
            "depths": self.depths,
            "tolerance": FLAT_SLOPE_TOLERANCE,
            "head_kinds": self.head_kinds,
            "slopes": [{"depth": d, "kind": k, "slope": s} for (d, k), s in self.slopes().items()],
            "depth_slopes": [
                {"width": w, "kind": k, "slope": s} for (w, k), s in self.depth_slopes().items()
            ],
            "not_flat": [{"depth": d, "kind": k} for d, k in self.not_flat()],
            "records": self.records,
        }

    def plot(self, path: str | os.PathLike) -> None:
        """RMS against width (log-log) after the last step: one line per kind, one panel per
        depth; kinds that are not flat are drawn solid and named, flat ones faint."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axes = plt.subplots(
            1, len(self.depths), figsize=(5.5 * len(self.depths), 4), squeeze=False
        )
        bad = self.not_flat()
        for axis, depth in zip(axes[0], self.depths):
            for kind, by_width in self.values(depth, self.steps).items():
                widths = [w for w in sorted(by_width) if by_width[w] > 0]
                if not widths:
                    continue
                ys = [by_width[w] for w in widths]
                loud = (depth, kind) in bad
                axis.plot(
                    widths, ys, marker="o", alpha=1.0 if loud else 0.25,
                    label=kind if loud else None,
                )  # fmt: skip
            axis.set_xscale("log", base=2)
            axis.set_yscale("log")
            axis.set_xlabel("width")
            axis.set_title(f"depth {depth}: {sum(k[0] == depth for k in bad)} kinds not flat")
            if any(k[0] == depth for k in bad):
                axis.legend(fontsize=6)
        axes[0][0].set_ylabel(f"output RMS after {self.steps} steps")
        figure.suptitle(f"coordinate check: {self.method}, lr {self.lr:g}")
        figure.tight_layout()
        image_format = os.path.splitext(str(path))[1].lstrip(".") or "png"
        try:
            atomic_write(path, lambda handle: figure.savefig(handle, format=image_format, dpi=120))
        finally:
            plt.close(figure)


def _rms_of(output: Any) -> float | None:
    """RMS of a module's output: its first floating tensor (tuples and HF outputs alike)."""
    if isinstance(output, torch.Tensor):
        return (
            output.detach().float().square().mean().sqrt().item()
            if output.is_floating_point()
            else None
        )
    if isinstance(output, Mapping):
        output = list(output.values())
    if isinstance(output, list | tuple):
        for item in output:
            found = _rms_of(item)
            if found is not None:
                return found
    return None


@torch.no_grad()
def _measure(model: nn.Module, run_forward: Callable[[], Any]) -> dict[str, float]:
    """Mean output RMS per kind during one forward pass, through hooks on every submodule."""
    per_module: dict[str, list[float]] = defaultdict(list)
    handles = []
    for name, module in model.named_modules():
        if not name:
            continue

        def hook(_module, _inputs, output, name=name):
            value = _rms_of(output)
            if value is not None and math.isfinite(value):
                per_module[name].append(value)

        handles.append(module.register_forward_hook(hook))
    try:
        run_forward()
    finally:
        for handle in handles:
            handle.remove()
    by_kind: dict[str, list[float]] = defaultdict(list)
    for name, values in per_module.items():
        by_kind[kind_of(name)].append(sum(values) / len(values))
    return {kind: sum(values) / len(values) for kind, values in by_kind.items()}


def _call(model: nn.Module, batch: Any) -> Any:
    return model(**batch) if isinstance(batch, Mapping) else model(batch)


def _default_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    output = _call(model, batch)
    loss = getattr(output, "loss", None)
    if loss is None and isinstance(output, Mapping):
        loss = output.get("loss")
    if not isinstance(loss, torch.Tensor):
        raise TypeError(
            f"{type(model).__name__}'s output has no 'loss'; pass loss=lambda model, batch: ... "
            "to coord_check_module"
        )
    return loss


def _head_kinds(model: nn.Module) -> list[str]:
    getter = getattr(model, "get_output_embeddings", None)
    head = getter() if callable(getter) else None
    return [kind_of(name) for name, module in model.named_modules() if module is head and name]


def coord_check_module(
    make: Factory,
    widths: Sequence[int] = (64, 128, 256),
    depths: Sequence[int] = (2,),
    *,
    batches: Callable[[int], Any] | Sequence[Any] | None = None,
    loss: Callable[[nn.Module, Any], torch.Tensor] | None = None,
    method: str = "hyperp",
    lr: float | None = None,
    steps: int = 5,
    vocab_size: int | None = None,
    batch: int = 4,
    context: int = 32,
    seed: int = 0,
) -> ModuleCoordResult:
    """Train ``steps`` steps at every (depth, width) of ``make``'s family and record every
    submodule's output RMS at init and after the last step.

    ``batches(step)`` (or a sequence) gives step ``step``'s batch; the same batches serve every
    shape, and step ``steps`` is the measurement batch. Without it, ``vocab_size`` asks for
    token batches (``batch`` sequences of ``context`` tokens) from a fixed Markov chain
    (``{"input_ids", "labels"}``, as a Hugging Face causal LM takes them). A dict batch is
    passed to the model as keywords, anything else as its one argument. ``loss(model, batch)`` defaults to the ``loss`` of the model's output.
    ``method`` and ``lr`` are those of ``hyperp check``; ``lr`` is the LR at the smallest depth.
    """
    if len(widths) < 2:
        raise ValueError("a coordinate check needs at least two widths, e.g. widths=(64, 128, 256)")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if batches is None:
        if vocab_size is None:
            raise ValueError(
                "pass batches=... (a function of the step) or vocab_size=... for tokens"
            )
        tokens = markov_batches(vocab_size, batch, context, steps + 1, seed=seed)
        batches = [{"input_ids": t, "labels": t} for t in tokens]
    batch_at = batches if callable(batches) else batches.__getitem__
    loss = loss or _default_loss
    lr = DEFAULT_LR.get(method, 0.01) if lr is None else lr
    result = ModuleCoordResult(method, lr, steps, sorted(widths), sorted(depths))
    for depth in result.depths:
        for width in result.widths:
            torch.manual_seed(seed)
            model = make(width, depth)
            result.head_kinds = sorted(set(result.head_kinds) | set(_head_kinds(model)))
            optimizer = method_optimizer(model, method, lr, depth_ratio=result.depths[0] / depth)
            for step in range(steps + 1):
                inputs = batch_at(step)
                if step in (0, steps):
                    model.eval()
                    values = _measure(model, lambda m=model, b=inputs: _call(m, b))
                    model.train()
                    result.records.extend(
                        dict(depth=depth, width=width, step=step, kind=kind, value=value)
                        for kind, value in values.items()
                    )
                if step == steps:
                    break
                value = loss(model, inputs)
                optimizer.zero_grad(set_to_none=True)
                value.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                result.records.append(
                    dict(depth=depth, width=width, step=step, kind="loss", value=value.item())
                )
    return result


_INTERMEDIATE_KEYS = ("intermediate_size", "n_inner", "ffn_dim", "moe_intermediate_size")


def hf_factory(config: Mapping[str, Any] | str | os.PathLike) -> Factory:
    """``make(width, depth)`` for a Hugging Face causal LM built from ``config`` (a dict, or a
    local ``config.json``; nothing is downloaded and no model code from files runs).

    Width and depth replace ``hidden_size`` and ``num_hidden_layers``; the head dimension, the
    ratio of query to key-value heads and the MLP's expansion ratio are kept.
    """
    from hyperp.hf import read_hf_config, require_transformers

    transformers = require_transformers()
    data = read_hf_config(config)
    model_type = data.pop("model_type")
    base = transformers.AutoConfig.for_model(model_type, **data)
    width0, heads0 = base.hidden_size, base.num_attention_heads
    head_dim = getattr(base, "head_dim", None) or width0 // heads0
    kv0 = getattr(base, "num_key_value_heads", None)

    def make(width: int, depth: int) -> nn.Module:
        if width % head_dim:
            raise ValueError(f"width {width} is not a multiple of the head dimension {head_dim}")
        scaled = transformers.AutoConfig.for_model(model_type, **data)
        heads = width // head_dim
        scaled.hidden_size, scaled.num_hidden_layers = width, depth
        scaled.num_attention_heads = heads
        if kv0:
            scaled.num_key_value_heads = max(1, heads * kv0 // heads0)
        if getattr(base, "head_dim", None):
            scaled.head_dim = head_dim
        for key in _INTERMEDIATE_KEYS:
            if isinstance(getattr(base, key, None), int):
                setattr(scaled, key, round(getattr(base, key) * width / width0))
        return transformers.AutoModelForCausalLM.from_config(scaled)

    make.config = base  # type: ignore[attr-defined]  # e.g. its vocab_size for token batches
    return make
