"""Stability indicators of docs/method.md §5, collected on logging steps only.

    with hyperp.monitor.collect(model) as stats:
        out = model(tokens)
    metrics = stats.summary()        # flat dict: branch_rms, attn_z, router_z, maxvio, ...
    per_layer = stats.per_layer()    # name -> list over layers

A model of another family (:class:`hyperp.hf.CausalLM`) names its decoder layers and head in
``monitor_points()``; forward hooks on them record what needs no view inside a layer: the
residual stream after each layer (``residual_rms``, ``outlier_pct``) and the logits' RMS
(``logit_rms``).

Our model's attention, MoE and block modules hold a ``_hyperp_monitor`` slot that is ``None``
outside this context, so a normal step pays one attribute test per module and nothing else.
Inside, each module hands its tensors to :class:`StabilityStats`, which computes the indicators
without gradients and accumulates them as on-device sums (no host sync during the forward);
several forwards inside one context (gradient accumulation) aggregate exactly, as if they were
one batch. Values are read out, and synchronised, only in :meth:`StabilityStats.summary`.
``collect`` also works on a ``torch.compile``-d model; the first monitored step then compiles
a second variant of the graph, so logging steps should be rare, as they are anyway.
Indicators are per process; a data-parallel trainer averages ``summary()`` over ranks if it
wants global values (expert counts are already global when the balancing loss is).

Indicators (per layer, and aggregated over layers):

- branch output RMS ``sqrt(mean(h^2))`` of each attention and MLP/MoE branch output after the
  ``1/sqrt(2L)`` multiplier; aggregate ``branch_rms`` = RMS over all branches of all layers;
- residual-stream RMS after each block (``residual_rms/i``; for the coordinate check);
- outlier percentage: in each token's residual-stream vector after the block, the share of
  elements with ``|h - mean| > 5 std`` (mean and std over the hidden dim); mean over layers;
- attention Z: mean over batch, heads and queries of ``LSE^2``, LSE the log-sum-exp of the
  scaled causal scores, computed here from q and k on every backend (docs/method.md §5 decision);
- router Z: mean over tokens of ``logsumexp(routed logits)^2``;
- MaxVio ``(max_i c_i - mean c) / mean c`` over expert assignment counts, and load fractions
  ``c_i / sum c`` (global over data-parallel ranks when the balancing loss is).
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterator

import torch
from torch import nn

__all__ = [
    "OUTLIER_SIGMAS",
    "StabilityStats",
    "attention_lse",
    "collect",
    "outlier_fraction",
]

OUTLIER_SIGMAS = 5.0
_MONITOR_SLOT = "_hyperp_monitor"
# Attention LSE is computed a block of query rows at a time so that the fp32 score buffer
# (batch x heads x rows x length) stays under this many elements (512 MiB).
_LSE_SCORE_ELEMENTS = 2**27


@torch.no_grad()
def attention_lse(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """Log-sum-exp over keys ``j <= i`` of ``scale * q_i . k_j``, shape batch x heads x length.

    ``q``: batch x heads x length x head_dim; ``k``: batch x kv_heads x length x head_dim with
    query head h reading kv head ``h // (heads / kv_heads)`` (grouped-query attention).
    """
    heads, kv_heads, length = q.shape[1], k.shape[1], q.shape[2]
    if heads % kv_heads:
        raise ValueError(f"query heads ({heads}) must be a multiple of kv heads ({kv_heads})")
    k = k.float().repeat_interleave(heads // kv_heads, dim=1)
    q = q.float()
    key_position = torch.arange(length, device=q.device)
    rows_per_chunk = max(1, _LSE_SCORE_ELEMENTS // (q.shape[0] * heads * length))
    chunks = []
    for start in range(0, length, rows_per_chunk):
        stop = min(length, start + rows_per_chunk)
        scores = torch.matmul(q[:, :, start:stop], k.transpose(-2, -1)) * scale
        query_position = torch.arange(start, stop, device=q.device)
        future = key_position[None, :] > query_position[:, None]
        scores.masked_fill_(future, float("-inf"))
        chunks.append(torch.logsumexp(scores, dim=-1))
    return torch.cat(chunks, dim=-1)


@torch.no_grad()
def outlier_fraction(h: torch.Tensor, sigmas: float = OUTLIER_SIGMAS) -> tuple[torch.Tensor, int]:
    """Number of elements with ``|h - mean| > sigmas * std`` per last-dim vector, and the
    element count (mean and population std over the last dim)."""
    h = h.float()
    mean = h.mean(dim=-1, keepdim=True)
    std = h.std(dim=-1, keepdim=True, correction=0)
    outliers = ((h - mean).abs() > sigmas * std).sum()
    return outliers, h.numel()


class _Sum:
    """A running on-device sum and a host-side element count."""

    __slots__ = ("count", "total")

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None
        self.count = 0

    def add(self, value: torch.Tensor, count: int) -> None:
        value = value.detach().double()
        self.total = value if self.total is None else self.total + value
        self.count += count

    def mean(self) -> float:
        return float(self.total) / self.count


class StabilityStats:
    """Accumulates the indicators of one logging step; see the module docstring."""

    def __init__(self) -> None:
        self._attn_sq: dict[int, _Sum] = defaultdict(_Sum)
        self._mlp_sq: dict[int, _Sum] = defaultdict(_Sum)
        self._residual_sq: dict[int, _Sum] = defaultdict(_Sum)
        self._outliers: dict[int, _Sum] = defaultdict(_Sum)
        self._attn_z: dict[int, _Sum] = defaultdict(_Sum)
        self._router_z: dict[int, _Sum] = defaultdict(_Sum)
        self._expert_counts: dict[int, torch.Tensor] = {}
        self._logit_sq = _Sum()

    # ----- called by the model --------------------------------------------------------------

    @torch.no_grad()
    def record_block(
        self, layer: int, attn_out: torch.Tensor, mlp_out: torch.Tensor, residual: torch.Tensor
    ) -> None:
        self._attn_sq[layer].add(attn_out.float().square().sum(), attn_out.numel())
        self._mlp_sq[layer].add(mlp_out.float().square().sum(), mlp_out.numel())
        self.record_residual(layer, residual)

    @torch.no_grad()
    def record_residual(self, layer: int, residual: torch.Tensor) -> None:
        self._residual_sq[layer].add(residual.float().square().sum(), residual.numel())
        outliers, elements = outlier_fraction(residual)
        self._outliers[layer].add(outliers, elements)

    @torch.no_grad()
    def record_logits(self, logits: torch.Tensor) -> None:
        self._logit_sq.add(logits.float().square().sum(), logits.numel())

    @torch.no_grad()
    def record_attention(self, layer: int, q: torch.Tensor, k: torch.Tensor, scale: float) -> None:
        lse = attention_lse(q, k, scale)
        self._attn_z[layer].add(lse.square().sum(), lse.numel())

    @torch.no_grad()
    def record_router(self, layer: int, logits: torch.Tensor, expert_counts: torch.Tensor) -> None:
        lse = torch.logsumexp(logits.float(), dim=-1)
        self._router_z[layer].add(lse.square().sum(), lse.numel())
        counts = expert_counts.detach().double()
        previous = self._expert_counts.get(layer)
        self._expert_counts[layer] = counts if previous is None else previous + counts

    # ----- read-out ---------------------------------------------------------------------------

    @property
    def layers(self) -> list[int]:
        return sorted(set(self._attn_sq) | set(self._attn_z) | set(self._router_z))

    def load_fractions(self) -> dict[int, list[float]]:
        """Per MoE layer, each routed expert's share of the top-k assignments."""
        out = {}
        for layer, counts in sorted(self._expert_counts.items()):
            total = float(counts.sum())
            out[layer] = (counts / max(total, 1.0)).tolist()
        return out

    def max_violation(self) -> dict[int, float]:
        """Per MoE layer, ``(max c - mean c) / mean c`` (0 at perfect balance)."""
        out = {}
        for layer, counts in sorted(self._expert_counts.items()):
            mean = float(counts.mean())
            out[layer] = (float(counts.max()) - mean) / mean if mean > 0 else 0.0
        return out

    def per_layer(self) -> dict[str, dict[int, float]]:
        """Indicator name -> {layer: value}."""
        table: dict[str, dict[int, float]] = {
            "attn_branch_rms": {i: s.mean() ** 0.5 for i, s in sorted(self._attn_sq.items())},
            "mlp_branch_rms": {i: s.mean() ** 0.5 for i, s in sorted(self._mlp_sq.items())},
            "residual_rms": {i: s.mean() ** 0.5 for i, s in sorted(self._residual_sq.items())},
            "outlier_pct": {i: 100.0 * s.mean() for i, s in sorted(self._outliers.items())},
            "attn_z": {i: s.mean() for i, s in sorted(self._attn_z.items())},
        }
        if self._router_z:
            table["router_z"] = {i: s.mean() for i, s in sorted(self._router_z.items())}
            table["maxvio"] = self.max_violation()
        return {name: values for name, values in table.items() if values}

    def summary(self) -> dict[str, float]:
        """Flat ``name -> value`` with aggregates (``branch_rms``, ``attn_branch_rms``,
        ``mlp_branch_rms``, ``outlier_pct``, ``attn_z``, ``router_z``, ``maxvio``,
        ``maxvio_max``, ``load_min``, ``load_max``) and per-layer entries ``name/layer``."""
        per_layer = self.per_layer()
        out: dict[str, float] = {}
        for name, values in per_layer.items():
            for layer, value in values.items():
                out[f"{name}/{layer}"] = value
        if self._attn_sq:
            attn_ms = [rms**2 for rms in per_layer["attn_branch_rms"].values()]
            mlp_ms = [rms**2 for rms in per_layer["mlp_branch_rms"].values()]
            out["attn_branch_rms"] = _mean(attn_ms) ** 0.5
            out["mlp_branch_rms"] = _mean(mlp_ms) ** 0.5
            out["branch_rms"] = _mean(attn_ms + mlp_ms) ** 0.5
        if self._outliers:
            out["outlier_pct"] = _mean(list(per_layer["outlier_pct"].values()))
        if self._logit_sq.count:
            out["logit_rms"] = self._logit_sq.mean() ** 0.5
        if "attn_z" in per_layer:
            out["attn_z"] = _mean(list(per_layer["attn_z"].values()))
            out["attn_z_max"] = max(per_layer["attn_z"].values())
        if "router_z" in per_layer:
            out["router_z"] = _mean(list(per_layer["router_z"].values()))
            out["router_z_max"] = max(per_layer["router_z"].values())
            maxvio = list(per_layer["maxvio"].values())
            out["maxvio"] = _mean(maxvio)
            out["maxvio_max"] = max(maxvio)
            fractions = self.load_fractions()
            out["load_min"] = min(min(f) for f in fractions.values())
            out["load_max"] = max(max(f) for f in fractions.values())
        return out


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


@contextlib.contextmanager
def collect(model: nn.Module) -> Iterator[StabilityStats]:
    """Collect the indicators of every forward of ``model`` run inside the ``with`` block."""
    stats = StabilityStats()
    slots = [m for m in model.modules() if hasattr(m, _MONITOR_SLOT)]
    if not slots and hasattr(model, "monitor_points"):
        with _hooked(stats, *model.monitor_points()):
            yield stats
        return
    if not slots:
        raise ValueError(
            f"{type(model).__name__} has no monitoring points; hyperp.monitor.collect works with "
            "hyperp.model.Transformer (or modules that define a _hyperp_monitor slot)"
        )
    busy = [m for m in slots if getattr(m, _MONITOR_SLOT) is not None]
    if busy:
        raise RuntimeError("hyperp.monitor.collect is already active on this model; do not nest it")
    for module in slots:
        setattr(module, _MONITOR_SLOT, stats)
    try:
        yield stats
    finally:
        for module in slots:
            setattr(module, _MONITOR_SLOT, None)


@contextlib.contextmanager
def _hooked(stats: StabilityStats, layers: list[nn.Module], head: nn.Module | None):
    """Forward hooks that hand each layer's output (the residual stream) and the head's
    output (the logits) to ``stats``; removed on exit."""

    def residual(index: int):
        def hook(_module, _inputs, output):
            stats.record_residual(index, output[0] if isinstance(output, tuple) else output)

        return hook

    handles = [layer.register_forward_hook(residual(i)) for i, layer in enumerate(layers)]
    if head is not None:
        handles.append(head.register_forward_hook(lambda _m, _i, out: stats.record_logits(out)))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
