"""MuonH, AdamH, the Muon baseline and Adam(W), as one optimizer family (docs/method.md §2).

All of them are :class:`GroupedOptimizer`: a ``torch.optim.Optimizer`` whose param groups each
name an ``algorithm``. :class:`MuonH`, :class:`AdamH` and :class:`Muon` are the same class with a
different default algorithm, and :func:`hyperp.optim.build_optimizer` returns one
``GroupedOptimizer`` that steps a whole model (MuonH matrices, AdamH head, Adam embedding and
vectors), so that one LR scheduler drives every group.

Algorithms:

- ``muonh``: Nesterov momentum, Newton-Schulz, a step of relative Frobenius size exactly ``lr``,
  then retraction to the fixed radius (docs/method.md §2.3).
- ``adamh``: Adam direction, the same relative step and retraction (docs/method.md §2.4).
- ``muon``: the paper's Muon baseline, ``W <- (1 - λ_t) W - lr · sqrt(fan_out/fan_in) · O`` with
  "independent" decay ``λ_t = weight_decay · lr / peak_lr`` (docs/method.md §2.5), or torch.optim.Muon's
  update (``scale="torch"``, ``decay="decoupled"``: ``lr · weight_decay`` as in AdamW, Keller
  Jordan coefficients in bf16).
- ``adam``: Adam with decoupled weight decay (AdamW when ``weight_decay > 0``).

Distributed (docs/method.md §4.1): state tensors are shaped like their parameters, so under FSDP2/HSDP they
are DTensors sharded like the parameters, and every elementwise update runs on the local shards.
Newton-Schulz, which needs whole matrices, is split across ranks by :mod:`hyperp.optim.sharding`:
each matrix has one owner that orthogonalizes it. Under DDP (plain replicated parameters) pass
``replicate_group`` so that the ranks split that work instead of repeating it. Same-shaped matrices
are orthogonalized as one batched call.

Every state tensor exists from construction (momentum and moments start at zero), so
``state_dict()`` is complete before the first step and ``torch.distributed.checkpoint`` can load
into a fresh optimizer.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch.optim import Optimizer

from hyperp.optim import updates
from hyperp.optim.newton_schulz import Coefficients, default_ns_dtype, dtype_name, newton_schulz
from hyperp.optim.sharding import (
    Grid,
    MatrixLayout,
    StepStats,
    WorkPlan,
    grid_of,
    local,
    orthogonalize,
    reduce_slice_norms,
)

__all__ = ["AdamH", "GroupedOptimizer", "Muon", "MuonH", "SphereError"]

ALGORITHMS = ("muonh", "adamh", "muon", "adam")
SPHERE_ALGORITHMS = ("muonh", "adamh")
# A matrix whose RMS entry is below this has no usable sphere (retraction would blow up noise).
MIN_RADIUS_RMS = 1e-6


class SphereError(ValueError):
    """A parameter cannot be put on a sphere (zero or non-finite norm)."""


_DEFAULTS: dict[str, Any] = {
    "algorithm": "muonh",
    "lr": 0.02,
    "momentum": 0.95,
    "nesterov": True,
    "betas": (0.9, 0.95),
    "eps": 1e-8,
    "weight_decay": 0.0,
    "sphere": "matrix",
    "layout": "batch",
    "transposed": False,
    "ns_steps": 5,
    "ns_coefficients": "hyperp",
    "ns_dtype": None,
    "scale": "spectral",
    "decay": "independent",
    "role": None,
}


class GroupedOptimizer(Optimizer):
    """One optimizer whose param groups each carry an ``algorithm`` (see the module docstring).

    Group options (any group may override the constructor's defaults): ``algorithm``, ``lr``,
    ``momentum``, ``nesterov`` (muonh, muon); ``betas``, ``eps`` (adamh, adam); ``weight_decay``;
    ``sphere`` ("matrix": one sphere per 2-D slice, or "tensor": one per parameter);
    ``layout`` ("batch": leading dims index matrices, or "flatten": ``shape[0] x rest``);
    ``transposed`` (matrices stored ``in x out``: fan-in first); ``ns_steps``,
    ``ns_coefficients``, ``ns_dtype``; ``scale`` and ``decay`` (muon only).

    ``replicate_group``: the process group over which plain (non-DTensor) parameters are
    replicated, as under DDP; Newton-Schulz is then split across its ranks. DTensor parameters
    (FSDP2, HSDP) carry their own mesh. After each step, ``step_stats`` says which matrices this
    rank orthogonalized and how many bytes it exchanged.
    """

    def __init__(
        self,
        params: Iterable,
        *,
        replicate_group: dist.ProcessGroup | None = None,
        **defaults: Any,
    ) -> None:
        unknown = set(defaults) - set(_DEFAULTS)
        if unknown:
            raise TypeError(
                f"unknown optimizer options {sorted(unknown)}; known: {sorted(_DEFAULTS)}"
            )
        self.replicate_group = replicate_group
        self.step_stats = StepStats()
        self._plans: dict[tuple, tuple[list[MatrixLayout], Grid, WorkPlan | None]] = {}
        super().__init__(params, {**_DEFAULTS, **defaults})

    # -- construction -------------------------------------------------------------------------

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        self._validate_group(group)
        group.setdefault("peak_lr", group["lr"])
        self._init_state(len(self.param_groups) - 1, group)

    def _validate_group(self, group: dict[str, Any]) -> None:
        algorithm = group["algorithm"]
        if algorithm not in ALGORITHMS:
            raise ValueError(f"unknown algorithm {algorithm!r}; use one of {ALGORITHMS}")
        if not group["lr"] >= 0:
            raise ValueError(f"lr must be non-negative, got {group['lr']}")
        if not 0 <= group["momentum"] < 1:
            raise ValueError(f"momentum must be in [0, 1), got {group['momentum']}")
        if group["weight_decay"] < 0:
            raise ValueError(f"weight_decay must be non-negative, got {group['weight_decay']}")
        if group["sphere"] not in ("matrix", "tensor"):
            raise ValueError(f"sphere must be 'matrix' or 'tensor', got {group['sphere']!r}")
        if group["layout"] not in ("batch", "flatten"):
            raise ValueError(f"layout must be 'batch' or 'flatten', got {group['layout']!r}")
        if group["scale"] not in ("spectral", "torch", "none"):
            raise ValueError(f"scale must be 'spectral', 'torch' or 'none', got {group['scale']!r}")
        if not isinstance(group["transposed"], bool):
            raise ValueError(f"transposed must be True or False, got {group['transposed']!r}")
        if group["decay"] == "coupled":
            raise ValueError(
                "decay='coupled' is now decay='decoupled' (W <- (1 - lr·wd) W, AdamW's decoupled "
                "form); rename it"
            )
        if group["decay"] not in ("independent", "decoupled"):
            raise ValueError(f"decay must be 'independent' or 'decoupled', got {group['decay']!r}")
        # Kept as a name ("bf16", "fp32") so that a saved state dict holds plain data only.
        group["ns_dtype"] = dtype_name(group["ns_dtype"])
        if algorithm in ("muonh", "muon", "adamh"):
            for param in group["params"]:
                if param.ndim < 2:
                    raise ValueError(
                        f"{algorithm} needs matrices, got a parameter of shape {tuple(param.shape)}; "
                        "put 1-D parameters in an 'adam' group (build_optimizer does this)"
                    )

    def _init_state(self, index: int, group: dict[str, Any]) -> None:
        """Create every state tensor now (see the module docstring) and fix the sphere radii the
        first time the optimizer sees a parameter (docs/method.md §2.3)."""
        algorithm, params = group["algorithm"], group["params"]
        for param in params:
            state = self.state[param]
            if algorithm in ("muonh", "muon"):
                state.setdefault("momentum_buffer", torch.zeros_like(param.detach()))
            else:
                state.setdefault("step", 0)
                state.setdefault("exp_avg", torch.zeros_like(param.detach()))
                state.setdefault("exp_avg_sq", torch.zeros_like(param.detach()))
        if algorithm not in SPHERE_ALGORITHMS or all("radius" in self.state[p] for p in params):
            return
        layouts, grid, _ = self._plan(index, group, params, need_work=False)
        with torch.no_grad():
            norms = reduce_slice_norms(layouts, grid, [local(p.detach()) for p in params])
        names = group.get("param_names") or [None] * len(params)
        for param, layout, slice_norms, name in zip(params, layouts, norms, names):
            if group["sphere"] == "tensor":
                radius, entries = slice_norms.square().sum().sqrt().reshape(1), param.numel()
            else:
                radius, entries = slice_norms, layout.rows * layout.cols
            _check_sphere(radius, entries, name or f"a parameter of shape {tuple(param.shape)}")
            self.state[param].setdefault("radius", radius)

    def _plan(self, index: int, group: dict[str, Any], params: list, need_work: bool = True):
        """Matrix layouts, the grid, and (for Newton-Schulz groups) the work plan of ``params``;
        cached, since it depends on shapes and meshes only."""
        key = (index, need_work, tuple(id(p) for p in params))
        if key not in self._plans:
            grids = {
                grid.members: grid for grid in (grid_of(p, self.replicate_group) for p in params)
            }
            if len(grids) > 1:
                raise ValueError(
                    "the parameters of one optimizer group must all be sharded on the same mesh "
                    "(FSDP2/HSDP) or all be plain tensors; shard every module with fully_shard, "
                    "or none"
                )
            grid = next(iter(grids.values()))
            layouts = [MatrixLayout.of(p.shape, group["layout"], grid.shard_size) for p in params]
            plan = WorkPlan(layouts, grid, group["ns_steps"]) if need_work else None
            self._plans[key] = (layouts, grid, plan)
        return self._plans[key]

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # torch casts floating state to the parameter dtype; radii define the sphere exactly, so
        # they are restored in fp32 whatever the parameter dtype. Saved and current parameters
        # pair up by position, whatever the saved keys are (indices, or names from DCP).
        saved_params = [key for group in state_dict["param_groups"] for key in group["params"]]
        params = [p for group in self.param_groups for p in group["params"]]
        radii = {
            param: state_dict["state"][key]["radius"]
            for key, param in zip(saved_params, params)
            if "radius" in state_dict["state"].get(key, {})
        }
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            group["ns_dtype"] = dtype_name(group["ns_dtype"])
            if group.get("decay") == "coupled":  # the same rule under its former name
                group["decay"] = "decoupled"
        for param, radius in radii.items():
            self.state[param]["radius"] = radius.to(dtype=torch.float32, device=param.device)

    # -- stepping -----------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.step_stats = StepStats()
        for index, group in enumerate(self.param_groups):
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if any(p.grad.is_sparse for p in params):
                raise RuntimeError("hyperp optimizers do not support sparse gradients")
            self._step_group(index, group, params)
        return loss

    def _step_group(self, index: int, group: dict[str, Any], params: list) -> None:
        """Dispatch to the group's update (:mod:`hyperp.optim.updates`) with this rank's local
        tensors, and the sharded Newton-Schulz and norms it needs."""
        algorithm, states = group["algorithm"], [self.state[p] for p in params]
        grads = [local(p.grad) for p in params]
        hyper = {"lr": group["lr"], "weight_decay": group["weight_decay"]}
        if algorithm in ("adam", "adamh"):
            for state in states:
                state["step"] += 1
            moments = [[local(state[k]) for state in states] for k in ("exp_avg", "exp_avg_sq")]
            optimizer_state = [*moments, [state["step"] for state in states]]
            hyper |= {"betas": group["betas"], "eps": group["eps"]}
        else:
            optimizer_state = [[local(state["momentum_buffer"]) for state in states]]
            hyper |= {"momentum": group["momentum"], "nesterov": group["nesterov"]}
            hyper["orthogonalize"] = self._orthogonalizer(index, group, params)
        if algorithm == "adam":
            updates.adam_update([local(p) for p in params], grads, *optimizer_state, **hyper)
        elif algorithm == "muon":
            hyper["decay"] = hyper.pop("weight_decay") * self._decay_factor(group)
            hyper["scales"] = self._muon_scales(index, group, params)
            updates.muon_update([local(p) for p in params], grads, *optimizer_state, **hyper)
        else:
            self._sphere_update(index, group, params, grads, optimizer_state, hyper)

    def _sphere_update(self, index, group, params, grads, optimizer_state, hyper) -> None:
        """MuonH or AdamH on fp32 ``(slices, rows, cols)`` views of this rank's parts, with the
        norms of every sphere summed over the shard group; parameters stored in another dtype
        get the result copied back."""
        layouts, grid, _ = self._plan(index, group, params, need_work=False)
        weights = [local(p) for p in params]
        work = [w if w.dtype == torch.float32 else w.float() for w in weights]
        per_tensor = group["sphere"] == "tensor"
        radii = [
            _local_slices(self.state[p]["radius"], layout, grid)
            for p, layout in zip(params, layouts)
        ]

        def sphere_norms(views: list[torch.Tensor]) -> list[torch.Tensor]:
            norms = reduce_slice_norms(layouts, grid, views, self.step_stats)
            return [
                _local_slices(_sphere_norm(norm, per_tensor), layout, grid)
                for norm, layout in zip(norms, layouts)
            ]

        def views(tensors) -> list[torch.Tensor]:
            return [layout.view(t) for layout, t in zip(layouts, tensors)]

        hyper |= {"sphere_norms": sphere_norms, "views": views}
        update = updates.muonh_update if group["algorithm"] == "muonh" else updates.adamh_update
        update(work, grads, *optimizer_state, radii, **hyper)
        for w, target in zip(work, weights):
            if w is not target:
                target.copy_(w)

    def _orthogonalizer(self, index, group, params):
        """Newton-Schulz of every matrix by its owner rank (:mod:`hyperp.optim.sharding`),
        the matrices travelling in Newton-Schulz's precision: it reads nothing finer."""
        _, _, plan = self._plan(index, group, params)
        name = group["ns_dtype"]
        dtype = _DTYPES[name] if name else default_ns_dtype(params[0].device)

        def orthogonal(stacked: torch.Tensor) -> torch.Tensor:
            return newton_schulz(
                stacked, group["ns_steps"], coefficients=group["ns_coefficients"], dtype=dtype
            )

        def run(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
            return orthogonalize(plan, tensors, orthogonal, self.step_stats, index, dtype)

        return run

    @staticmethod
    def _decay_factor(group: dict[str, Any]) -> float:
        """What multiplies ``weight_decay`` in the Muon baseline's ``(1 - λ_t)``: ``lr/peak_lr``
        (independent: decay follows the schedule, not the LR's magnitude) or ``lr``
        (decoupled, as AdamW and torch.optim.Muon)."""
        if group["decay"] == "independent":
            peak = group["peak_lr"]
            return group["lr"] / peak if peak > 0 else 0.0
        return group["lr"]

    def _muon_scales(self, index, group, params) -> list[float]:
        layouts, _, _ = self._plan(index, group, params, need_work=False)
        scales = []
        for layout in layouts:
            fan_out, fan_in = layout.rows, layout.cols
            if group["transposed"]:
                fan_out, fan_in = fan_in, fan_out
            if group["scale"] == "spectral":
                scales.append(math.sqrt(fan_out / fan_in))
            elif group["scale"] == "torch":
                scales.append(math.sqrt(max(1.0, layout.rows / layout.cols)))
            else:
                scales.append(1.0)
        return scales

    # -- inspection ---------------------------------------------------------------------------

    def describe(self) -> str:
        """A table of every parameter: name, role, algorithm, shape, sphere radius, LR."""
        rows = [("parameter", "role", "algorithm", "shape", "radius", "lr")]
        for group in self.param_groups:
            names = group.get("param_names") or [f"#{i}" for i in range(len(group["params"]))]
            for name, p in zip(names, group["params"]):
                radius = self.state[p].get("radius")
                if radius is None:
                    radius_text = "-"
                elif radius.numel() == 1:
                    radius_text = f"{radius.item():.4g}"
                else:
                    radius_text = (
                        f"{radius.min().item():.4g}..{radius.max().item():.4g} (x{radius.numel()})"
                    )
                role = str(group.get("role") or "-")
                rows.append(
                    (
                        name,
                        role + (" (in x out)" if group["transposed"] else ""),
                        group["algorithm"],
                        "x".join(str(s) for s in p.shape),
                        radius_text,
                        f"{group['lr']:.4g}",
                    )
                )
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def radius(self, param: torch.Tensor) -> torch.Tensor:
        """The fixed sphere radius (per slice, or one value) of a MuonH/AdamH parameter."""
        state = self.state.get(param, {})
        if "radius" not in state:
            raise KeyError("this parameter is not on a sphere in this optimizer")
        return state["radius"]

    def state_bytes(self) -> int:
        """Bytes of optimizer state held by this rank (local shards of sharded state)."""
        total = 0
        for state in self.state.values():
            for value in state.values():
                if isinstance(value, torch.Tensor):
                    part = local(value)
                    total += part.numel() * part.element_size()
        return total


_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}


def _check_sphere(radius: torch.Tensor, entries: int, label: str) -> None:
    rms = radius / math.sqrt(entries)
    if not bool(torch.isfinite(radius).all()) or bool((rms < MIN_RADIUS_RMS).any()):
        raise SphereError(
            f"{label} has a zero, tiny or non-finite Frobenius norm "
            f"(min RMS {rms.min().item():.3g}), so it has no sphere to stay on. MuonH/AdamH keep "
            "each matrix at its initial norm: initialize it with a nonzero distribution "
            "(e.g. kaiming-uniform) before building the optimizer, or give it the 'vector' role."
        )


def _sphere_norm(slice_norms: torch.Tensor, per_tensor: bool) -> torch.Tensor:
    """Norm of each sphere: per slice, or (``sphere="tensor"``) of the whole parameter."""
    return slice_norms.square().sum().sqrt().reshape(1) if per_tensor else slice_norms


def _local_slices(values: torch.Tensor, layout: MatrixLayout, grid: Grid) -> torch.Tensor:
    """Per-sphere values for this rank's slices, shaped to scale a ``(slices, rows, cols)`` view."""
    if values.numel() == 1:
        return values.reshape(1, 1, 1)
    first, last = layout.slices_on(grid.shard_rank)
    return values[first:last, None, None]


class MuonH(GroupedOptimizer):
    """Muon on the hypersphere (docs/method.md §2.3): every matrix keeps its initial Frobenius norm and
    moves by a relative step of exactly ``lr`` per iteration.

    >>> opt = MuonH(model.parameters(), lr=0.02)  # matrices only; see build_optimizer for a model
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        weight_decay: float = 0.0,
        sphere: str = "matrix",
        ns_steps: int = 5,
        ns_coefficients: Coefficients = "hyperp",
        ns_dtype: torch.dtype | str | None = None,
        **group_defaults: Any,
    ) -> None:
        super().__init__(
            params,
            algorithm="muonh",
            lr=lr,
            momentum=momentum,
            nesterov=nesterov,
            weight_decay=weight_decay,
            sphere=sphere,
            ns_steps=ns_steps,
            ns_coefficients=ns_coefficients,
            ns_dtype=ns_dtype,
            **group_defaults,
        )


class AdamH(GroupedOptimizer):
    """Adam on the hypersphere (docs/method.md §2.4), used for the output head."""

    def __init__(
        self,
        params: Iterable,
        lr: float = 0.02,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        sphere: str = "matrix",
        **group_defaults: Any,
    ) -> None:
        super().__init__(
            params,
            algorithm="adamh",
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            sphere=sphere,
            **group_defaults,
        )


class Muon(GroupedOptimizer):
    """The paper's Muon baseline (docs/method.md §2.5): ``W <- (1 - λ_t) W - lr·sqrt(fan_out/fan_in)·O``
    with independent weight decay ``λ_t = weight_decay · lr_t / peak_lr``.

    :meth:`like_torch` builds the variant whose update matches ``torch.optim.Muon``.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        weight_decay: float = 0.0,
        scale: str = "spectral",
        decay: str = "independent",
        ns_steps: int = 5,
        ns_coefficients: Coefficients = "hyperp",
        ns_dtype: torch.dtype | str | None = None,
        **group_defaults: Any,
    ) -> None:
        super().__init__(
            params,
            algorithm="muon",
            lr=lr,
            momentum=momentum,
            nesterov=nesterov,
            weight_decay=weight_decay,
            scale=scale,
            decay=decay,
            ns_steps=ns_steps,
            ns_coefficients=ns_coefficients,
            ns_dtype=ns_dtype,
            **group_defaults,
        )

    @classmethod
    def like_torch(
        cls, params: Iterable, lr: float = 1e-3, weight_decay: float = 0.1, **kw
    ) -> Muon:
        """``torch.optim.Muon``'s update: Keller Jordan coefficients in bf16,
        ``sqrt(max(1, rows/cols))`` scaling and ``lr · weight_decay`` decoupled decay."""
        options = {
            "ns_coefficients": "keller_jordan",
            "ns_dtype": torch.bfloat16,
            "scale": "torch",
            "decay": "decoupled",
            **kw,
        }
        return cls(params, lr=lr, weight_decay=weight_decay, **options)
