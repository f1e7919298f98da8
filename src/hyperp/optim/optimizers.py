"""MuonH, AdamH, the Muon baseline and Adam(W), as one optimizer family (METHOD.md section 2).

All of them are :class:`GroupedOptimizer`: a ``torch.optim.Optimizer`` whose param groups each
name an ``algorithm``. :class:`MuonH`, :class:`AdamH` and :class:`Muon` are the same class with a
different default algorithm, and :func:`hyperp.optim.build_optimizer` returns one
``GroupedOptimizer`` that steps a whole model (MuonH matrices, AdamH head, Adam embedding and
vectors), so that one LR scheduler drives every group.

Algorithms:

- ``muonh``: Nesterov momentum, Newton-Schulz, a step of relative Frobenius size exactly ``lr``,
  then retraction to the fixed radius (METHOD 2.3).
- ``adamh``: Adam direction, the same relative step and retraction (METHOD 2.4).
- ``muon``: the paper's Muon baseline, ``W <- (1 - λ_t) W - lr · sqrt(fan_out/fan_in) · O`` with
  "independent" decay ``λ_t = weight_decay · lr / peak_lr`` (METHOD 2.5), or torch.optim.Muon's
  update (``scale="torch"``, ``decay="coupled"``, Keller Jordan coefficients in bf16).
- ``adam``: Adam with decoupled weight decay (AdamW when ``weight_decay > 0``).

Matrices of the same shape (same-shaped layers, the slices of an expert bank) are stacked and
orthogonalized as one batched Newton-Schulz call; norms, steps and retractions then run on the
stacked tensor, so the per-step cost does not grow with the number of Python-level parameters.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import torch
from torch.distributed.tensor import DTensor, distribute_tensor
from torch.optim import Optimizer

from hyperp.optim.newton_schulz import Coefficients, newton_schulz

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
    "ns_steps": 5,
    "ns_coefficients": "hyperp",
    "ns_dtype": None,
    "scale": "spectral",
    "decay": "independent",
    "role": None,
}


def _matrix_view(param: torch.Tensor, layout: str) -> torch.Tensor:
    """``(count, rows, cols)`` view of a parameter read as matrices."""
    if layout == "flatten" or param.ndim == 2:
        return param.reshape(1, param.shape[0], -1)
    return param.reshape(-1, param.shape[-2], param.shape[-1])


def _buckets(views: list[torch.Tensor]):
    """Yield ``(indices, stacked)``: the ``(count, rows, cols)`` views of one matrix shape,
    concatenated to ``(K, rows, cols)`` so that one batched kernel serves them all."""
    by_shape: dict[tuple, list[int]] = defaultdict(list)
    for i, view in enumerate(views):
        by_shape[(tuple(view.shape[-2:]), view.dtype, view.device)].append(i)
    for indices in by_shape.values():
        stacked = views[indices[0]] if len(indices) == 1 else torch.cat([views[i] for i in indices])
        yield indices, stacked


def _full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor: a sharded DTensor is all-gathered, a plain tensor returned as is."""
    if isinstance(tensor, DTensor):
        return tensor.full_tensor()
    return tensor


def _write_shard(param: torch.Tensor, full: torch.Tensor) -> None:
    """Copy this rank's shard of the updated whole tensor into a DTensor parameter."""
    shard = distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=None)
    param.to_local().copy_(shard.to_local())


def _sphere_norms(stacked: torch.Tensor, unit: torch.Tensor | None, radius: torch.Tensor):
    """Frobenius norm per sphere: per slice, or summed over the slices of each ``unit``."""
    norms = torch.linalg.vector_norm(stacked, dim=(-2, -1))
    if unit is None:
        return norms
    return torch.zeros_like(radius).index_add_(0, unit, norms.square()).sqrt()


def _per_slice(values: torch.Tensor, unit: torch.Tensor | None) -> torch.Tensor:
    """Per-sphere values broadcast to ``(K, 1, 1)`` over the stacked slices."""
    return (values if unit is None else values[unit])[:, None, None]


def _dtype_from(value: torch.dtype | str | None) -> torch.dtype | None:
    if value is None or isinstance(value, torch.dtype):
        return value
    names = {
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
        "fp32": torch.float32,
        "float32": torch.float32,
        "fp16": torch.float16,
        "float16": torch.float16,
    }
    if value not in names:
        raise ValueError(f"unknown ns_dtype {value!r}; use one of {sorted(names)}")
    return names[value]


class GroupedOptimizer(Optimizer):
    """One optimizer whose param groups each carry an ``algorithm`` (see the module docstring).

    Group options (any group may override the constructor's defaults): ``algorithm``, ``lr``,
    ``momentum``, ``nesterov`` (muonh, muon); ``betas``, ``eps`` (adamh, adam); ``weight_decay``;
    ``sphere`` ("matrix": one sphere per 2-D slice, or "tensor": one per parameter);
    ``layout`` ("batch": leading dims index matrices, or "flatten": ``shape[0] x rest``);
    ``ns_steps``, ``ns_coefficients``, ``ns_dtype``; ``scale`` and ``decay`` (muon only).
    """

    def __init__(self, params: Iterable, **defaults: Any) -> None:
        unknown = set(defaults) - set(_DEFAULTS)
        if unknown:
            raise TypeError(
                f"unknown optimizer options {sorted(unknown)}; known: {sorted(_DEFAULTS)}"
            )
        super().__init__(params, {**_DEFAULTS, **defaults})

    # -- construction -------------------------------------------------------------------------

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        self._validate_group(group)
        group.setdefault("peak_lr", group["lr"])
        if group["algorithm"] in SPHERE_ALGORITHMS:
            names = group.get("param_names") or [None] * len(group["params"])
            for param, name in zip(group["params"], names):
                self._init_radius(param, group, name)

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
        if group["decay"] not in ("independent", "coupled"):
            raise ValueError(f"decay must be 'independent' or 'coupled', got {group['decay']!r}")
        group["ns_dtype"] = _dtype_from(group["ns_dtype"])
        if algorithm in ("muonh", "muon", "adamh"):
            for param in group["params"]:
                if param.ndim < 2:
                    raise ValueError(
                        f"{algorithm} needs matrices, got a parameter of shape {tuple(param.shape)}; "
                        "put 1-D parameters in an 'adam' group (build_optimizer does this)"
                    )

    def _init_radius(self, param: torch.Tensor, group: dict[str, Any], name: str | None) -> None:
        """Fix the sphere radius the first time the optimizer sees ``param`` (METHOD 2.3)."""
        state = self.state[param]
        if "radius" in state:
            return
        with torch.no_grad():
            slices = _matrix_view(_full(param.detach()), group["layout"]).float()
            if group["sphere"] == "matrix":
                radius = torch.linalg.vector_norm(slices, dim=(-2, -1))
                entries = slices[0].numel()
            else:
                radius = torch.linalg.vector_norm(slices).reshape(1)
                entries = slices.numel()
        rms = radius / math.sqrt(entries)
        if not bool(torch.isfinite(radius).all()) or bool((rms < MIN_RADIUS_RMS).any()):
            label = name or f"a parameter of shape {tuple(param.shape)}"
            raise SphereError(
                f"{label} has a zero, tiny or non-finite Frobenius norm "
                f"(min RMS {rms.min().item():.3g}), so it has no sphere to stay on. MuonH/AdamH keep "
                "each matrix at its initial norm: initialize it with a nonzero distribution "
                "(e.g. kaiming-uniform) before building the optimizer, or give it the 'vector' role."
            )
        state["radius"] = radius

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # torch casts floating state to the parameter dtype; radii define the sphere exactly, so
        # they are restored in fp32 whatever the parameter dtype.
        radii = {key: s["radius"] for key, s in state_dict["state"].items() if "radius" in s}
        super().load_state_dict(state_dict)
        params = [p for group in self.param_groups for p in group["params"]]
        for key, radius in radii.items():
            param = params[key]
            self.state[param]["radius"] = radius.to(dtype=torch.float32, device=param.device)

    # -- stepping -----------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            for p in params:
                if p.grad.is_sparse:
                    raise RuntimeError("hyperp optimizers do not support sparse gradients")
            # Sharded (DTensor) parameters are gathered whole: the sphere and Newton-Schulz act on
            # the whole matrix. Every rank computes the same update and keeps its own shard.
            tensors = [_full(p) for p in params]
            grads = [_full(p.grad) for p in params]
            states = [self.state[p] for p in params]
            algorithm = group["algorithm"]
            if algorithm in ("muonh", "muon"):
                directions = self._orthogonalized_momentum(group, tensors, grads, states)
                if algorithm == "muonh":
                    self._sphere_step(group, tensors, directions, states)
                else:
                    self._muon_step(group, tensors, directions)
            elif algorithm == "adamh":
                directions = self._adam_directions(group, tensors, grads, states)
                self._sphere_step(group, tensors, directions, states)
            else:
                self._adam_step(group, tensors, grads, states)
            for p, full in zip(params, tensors):
                if full is not p:
                    _write_shard(p, full)
        return loss

    def _orthogonalized_momentum(self, group, params, grads, states) -> list[torch.Tensor]:
        """Nesterov momentum (accumulating form), then batched Newton-Schulz per shape bucket."""
        momentum = group["momentum"]
        buffers = []
        for p, state in zip(params, states):
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            buffers.append(state["momentum_buffer"])
        torch._foreach_mul_(buffers, momentum)
        torch._foreach_add_(buffers, grads)
        if group["nesterov"]:
            updates = torch._foreach_add(grads, buffers, alpha=momentum)
        else:
            updates = buffers
        directions: list[torch.Tensor | None] = [None] * len(params)
        views = [_matrix_view(u, group["layout"]) for u in updates]
        for indices, stacked in _buckets(views):
            ortho = newton_schulz(
                stacked,
                group["ns_steps"],
                coefficients=group["ns_coefficients"],
                dtype=group["ns_dtype"],
            )
            for i, chunk in zip(indices, ortho.split([views[i].shape[0] for i in indices])):
                directions[i] = chunk
        return directions  # type: ignore[return-value]

    def _adam_moments(self, group, grads, states) -> tuple[list, list, list[int]]:
        beta1, beta2 = group["betas"]
        exp_avgs, exp_avg_sqs, steps = [], [], []
        for grad, state in zip(grads, states):
            if "exp_avg" not in state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(grad, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(grad, memory_format=torch.preserve_format)
            state["step"] += 1
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            steps.append(state["step"])
        torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
        return exp_avgs, exp_avg_sqs, steps

    def _adam_denominators(self, group, exp_avg_sqs, steps) -> list[torch.Tensor]:
        """``sqrt(v_hat) + eps`` with ``v_hat = v / (1 - beta2^t)``."""
        beta2 = group["betas"][1]
        denominators = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_div_(denominators, [math.sqrt(1 - beta2**t) for t in steps])
        torch._foreach_add_(denominators, group["eps"])
        return denominators

    def _adam_directions(self, group, params, grads, states) -> list[torch.Tensor]:
        """AdamH's direction ``m_hat / (sqrt(v_hat) + eps)``, as ``(count, rows, cols)``."""
        beta1 = group["betas"][0]
        exp_avgs, exp_avg_sqs, steps = self._adam_moments(group, grads, states)
        denominators = self._adam_denominators(group, exp_avg_sqs, steps)
        directions = torch._foreach_div(exp_avgs, denominators)
        torch._foreach_div_(directions, [1 - beta1**t for t in steps])
        return [_matrix_view(d, group["layout"]) for d in directions]

    def _adam_step(self, group, params, grads, states) -> None:
        beta1 = group["betas"][0]
        lr, weight_decay = group["lr"], group["weight_decay"]
        exp_avgs, exp_avg_sqs, steps = self._adam_moments(group, grads, states)
        denominators = self._adam_denominators(group, exp_avg_sqs, steps)
        if weight_decay:
            torch._foreach_mul_(params, 1 - lr * weight_decay)
        torch._foreach_addcdiv_(
            params, exp_avgs, denominators, [-lr / (1 - beta1**t) for t in steps]
        )

    def _sphere_step(self, group, params, directions, states) -> None:
        """``W' = (1 - lr·wd) W - lr · R/||D|| · D``, then ``W <- R · W'/||W'||`` (METHOD 2.3).

        Runs on the stacked matrices of one shape at a time, in fp32. ``sphere="matrix"``: one
        radius per 2-D slice; ``"tensor"``: slices of one parameter share a radius.
        """
        lr, weight_decay = group["lr"], group["weight_decay"]
        per_tensor = group["sphere"] == "tensor"
        for indices, stacked_directions in _buckets(directions):
            members = [params[i] for i in indices]
            views = [_matrix_view(p, group["layout"]) for p in members]
            radii = [states[i]["radius"] for i in indices]
            counts = [v.shape[0] for v in views]
            # One member in fp32 is stepped in place; several are stacked (one copy) first.
            weights = torch.cat(views).float() if len(views) > 1 else views[0].float()
            stacked_directions = stacked_directions.float()  # a fresh tensor: safe to scale
            radius = torch.cat(radii) if len(radii) > 1 else radii[0]
            # Sphere of each slice: itself, or (sphere="tensor") the parameter it belongs to.
            unit = None
            if per_tensor:
                unit = torch.repeat_interleave(
                    torch.arange(len(members), device=weights.device),
                    torch.tensor(counts, device=weights.device),
                )
            # The retraction removes any overall scale, so decay (1 - lr·wd)·W is applied as a
            # step scaled by 1/(1 - lr·wd): one pass less, same point on the sphere.
            # A zero direction (zero gradient) moves nothing instead of dividing by zero.
            step_size = (
                lr * radius / _sphere_norms(stacked_directions, unit, radius).clamp_min(1e-30)
            )
            if weight_decay:
                step_size = step_size / (1 - lr * weight_decay)
            weights.sub_(stacked_directions.mul_(_per_slice(step_size, unit)))
            weights.mul_(_per_slice(radius / _sphere_norms(weights, unit, radius), unit))
            if weights.data_ptr() != members[0].data_ptr():
                torch._foreach_copy_(
                    members, [w.reshape(p.shape) for w, p in zip(weights.split(counts), members)]
                )

    def _muon_step(self, group, params, directions) -> None:
        """The Muon baseline update (METHOD 2.5); no sphere."""
        lr, weight_decay = group["lr"], group["weight_decay"]
        if group["decay"] == "independent":
            # λ_t = λ · η_t / η_peak: decay follows the schedule but not the LR's magnitude.
            peak = group["peak_lr"]
            decay = weight_decay * (lr / peak if peak > 0 else 0.0)
        else:
            decay = lr * weight_decay  # torch.optim.Muon: decoupled, scaled by the LR
        if decay:
            torch._foreach_mul_(params, 1 - decay)
        by_scale: dict[float, tuple[list, list]] = defaultdict(lambda: ([], []))
        for p, direction in zip(params, directions):
            rows, cols = _matrix_view(p, group["layout"]).shape[-2:]
            if group["scale"] == "spectral":
                scale = math.sqrt(rows / cols)
            elif group["scale"] == "torch":
                scale = math.sqrt(max(1.0, p.shape[0] / p.shape[1]))
            else:
                scale = 1.0
            targets, sources = by_scale[scale]
            targets.append(p)
            sources.append(direction.reshape(p.shape).to(p.dtype))
        for scale, (targets, sources) in by_scale.items():
            torch._foreach_add_(targets, sources, alpha=-lr * scale)

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
                rows.append(
                    (
                        name,
                        str(group.get("role") or "-"),
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


class MuonH(GroupedOptimizer):
    """Muon on the hypersphere (METHOD.md 2.3): every matrix keeps its initial Frobenius norm and
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
    """Adam on the hypersphere (METHOD.md 2.4), used for the output head."""

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
    """The paper's Muon baseline (METHOD.md 2.5): ``W <- (1 - λ_t) W - lr·sqrt(fan_out/fan_in)·O``
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
            "decay": "coupled",
            **kw,
        }
        return cls(params, lr=lr, weight_decay=weight_decay, **options)
