"""The four updates as pure functions over local tensors (docs/method.md §2).

Each function changes the weights and state tensors it is given in place and keeps nothing.
Whatever needs more than this rank's tensors comes in as a function: ``orthogonalize`` (Newton-
Schulz of whole matrices, split across ranks by :mod:`hyperp.optim.sharding`) and
``sphere_norms`` (the norm of every sphere, from per-rank partial sums). The classes of
:mod:`hyperp.optim.optimizers` keep the state, pick the update per param group and supply those
two functions; on one process they are a plain Newton-Schulz and a plain norm.

Sphere updates work on ``(slices, rows, cols)`` views: one sphere per slice (``radii`` and the
norms ``(slices, 1, 1)``) or one per tensor (``(1, 1, 1)``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

__all__ = [
    "adam_direction",
    "adam_update",
    "adamh_update",
    "muon_update",
    "muonh_update",
    "nesterov_momentum",
    "sphere_step",
]

Tensors = Sequence[torch.Tensor]
Orthogonalize = Callable[[list[torch.Tensor]], list[torch.Tensor]]
SphereNorms = Callable[[Tensors], list[torch.Tensor]]


def nesterov_momentum(
    grads: Tensors, buffers: Tensors, momentum: float, nesterov: bool
) -> list[torch.Tensor]:
    """``buf <- momentum·buf + g`` (in place); returns ``g + momentum·buf`` (Nesterov) or buf."""
    torch._foreach_mul_(buffers, momentum)
    torch._foreach_add_(buffers, grads)
    if nesterov:
        return list(torch._foreach_add(grads, buffers, alpha=momentum))
    return list(buffers)


def _adam_moments(grads, exp_avgs, exp_avg_sqs, betas) -> None:
    beta1, beta2 = betas
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)


def _adam_denominators(exp_avg_sqs, steps: Sequence[int], beta2: float, eps: float):
    """``sqrt(v_hat) + eps`` with ``v_hat = v / (1 - beta2^t)``."""
    denominators = torch._foreach_sqrt(exp_avg_sqs)
    torch._foreach_div_(denominators, [math.sqrt(1 - beta2**t) for t in steps])
    torch._foreach_add_(denominators, eps)
    return denominators


def adam_direction(
    grads: Tensors,
    exp_avgs: Tensors,
    exp_avg_sqs: Tensors,
    steps: Sequence[int],
    betas: tuple[float, float],
    eps: float,
) -> list[torch.Tensor]:
    """Update the moments (in place; ``steps`` already counts this step) and return Adam's
    direction ``m_hat / (sqrt(v_hat) + eps)``."""
    _adam_moments(grads, exp_avgs, exp_avg_sqs, betas)
    denominators = _adam_denominators(exp_avg_sqs, steps, betas[1], eps)
    directions = torch._foreach_div(exp_avgs, denominators)
    torch._foreach_div_(directions, [1 - betas[0] ** t for t in steps])
    return list(directions)


def sphere_step(
    weights: Tensors,
    directions: Tensors,
    radii: Tensors,
    *,
    lr: float,
    weight_decay: float,
    sphere_norms: SphereNorms,
) -> None:
    """``W' = (1 - lr·wd) W - lr · R/||D|| · D``, then ``W <- R · W'/||W'||`` (docs/method.md §2.3), on
    fp32 ``(slices, rows, cols)`` views. The retraction removes any overall scale, so decay
    ``(1 - lr·wd)·W`` is applied as a step scaled by ``1/(1 - lr·wd)``: the same point on the
    sphere, one pass less.

    All matrices at once: a few multi-tensor (``torch._foreach_*``) calls in place of a loop of
    small ones per matrix, which on a GPU would be bound by kernel launches. ``sphere_norms``
    returns the norms shaped like ``radii``, to scale each view."""
    norms = torch._foreach_clamp_min(sphere_norms(directions), 1e-30)  # a zero D moves nothing
    scales = torch._foreach_div(radii, norms)
    torch._foreach_mul_(scales, -lr / (1 - lr * weight_decay))
    torch._foreach_addcmul_(weights, directions, scales)
    torch._foreach_mul_(weights, torch._foreach_div(radii, sphere_norms(weights)))


def muonh_update(
    weights: Tensors,
    grads: Tensors,
    buffers: Tensors,
    radii: Tensors,
    *,
    lr: float,
    momentum: float,
    nesterov: bool,
    weight_decay: float,
    orthogonalize: Orthogonalize,
    sphere_norms: SphereNorms,
    views: Callable[[Tensors], list[torch.Tensor]] = list,
) -> None:
    """MuonH (docs/method.md §2.3): Nesterov momentum, Newton-Schulz, a relative step of exactly ``lr``
    on each sphere, retraction. ``views`` maps tensors to their ``(slices, rows, cols)``
    views."""
    directions = orthogonalize(nesterov_momentum(grads, buffers, momentum, nesterov))
    sphere_step(views(weights), views(directions), radii, lr=lr, weight_decay=weight_decay,
                sphere_norms=sphere_norms)  # fmt: skip


def adamh_update(
    weights: Tensors,
    grads: Tensors,
    exp_avgs: Tensors,
    exp_avg_sqs: Tensors,
    steps: Sequence[int],
    radii: Tensors,
    *,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    sphere_norms: SphereNorms,
    views: Callable[[Tensors], list[torch.Tensor]] = list,
) -> None:
    """AdamH (docs/method.md §2.4): Adam's direction, the same relative step and retraction."""
    directions = adam_direction(grads, exp_avgs, exp_avg_sqs, steps, betas, eps)
    sphere_step(views(weights), views(directions), radii, lr=lr, weight_decay=weight_decay,
                sphere_norms=sphere_norms)  # fmt: skip


def muon_update(
    weights: Tensors,
    grads: Tensors,
    buffers: Tensors,
    *,
    lr: float,
    momentum: float,
    nesterov: bool,
    decay: float,
    scales: Sequence[float],
    orthogonalize: Orthogonalize,
) -> None:
    """The Muon baseline (docs/method.md §2.5): ``W <- (1 - decay) W - lr · scale · O`` with ``O`` the
    orthogonalized Nesterov momentum; ``decay`` is the factor for this step (see
    :class:`hyperp.optim.Muon` for the independent and decoupled forms)."""
    directions = orthogonalize(nesterov_momentum(grads, buffers, momentum, nesterov))
    if decay:
        torch._foreach_mul_(weights, 1 - decay)
    for weight, direction, scale in zip(weights, directions, scales):
        weight.add_(direction.to(weight.dtype), alpha=-lr * scale)


def adam_update(
    weights: Tensors,
    grads: Tensors,
    exp_avgs: Tensors,
    exp_avg_sqs: Tensors,
    steps: Sequence[int],
    *,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
) -> None:
    """Adam with decoupled weight decay ``W <- (1 - lr·wd) W`` (AdamW when ``wd > 0``)."""
    _adam_moments(grads, exp_avgs, exp_avg_sqs, betas)
    denominators = _adam_denominators(exp_avg_sqs, steps, betas[1], eps)
    if weight_decay:
        torch._foreach_mul_(weights, 1 - lr * weight_decay)
    torch._foreach_addcdiv_(
        weights, exp_avgs, denominators, [-lr / (1 - betas[0] ** t) for t in steps]
    )
