"""From a model to one optimizer: roles -> param groups -> algorithms (docs/method.md §2.1, §2.5)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed
from torch import nn

from hyperp.optim.newton_schulz import Coefficients
from hyperp.optim.optimizers import GroupedOptimizer
from hyperp.optim.roles import ParamRole, Role, assign_roles

__all__ = ["METHODS", "build_optimizer", "param_groups"]

METHODS = ("hyperp", "muon", "adamw")

# Which algorithm trains each role, per method (docs/method.md §2.1 and §2.5).
_ALGORITHM = {
    "hyperp": {
        Role.MATRIX: "muonh",
        Role.HEAD: "adamh",
        Role.EMBEDDING: "adam",
        Role.VECTOR: "adam",
    },
    "muon": {Role.MATRIX: "muon", Role.HEAD: "adam", Role.EMBEDDING: "adam", Role.VECTOR: "adam"},
    "adamw": {Role.MATRIX: "adam", Role.HEAD: "adam", Role.EMBEDDING: "adam", Role.VECTOR: "adam"},
}


def param_groups(
    model: nn.Module,
    *,
    head: nn.Module | str | None = None,
    roles: Mapping[str, ParamRole | Role | str | Mapping] | None = None,
) -> list[dict[str, Any]]:
    """The model's trainable parameters split by role (and matrix layout).

    Each group is a dict with ``role`` (a :class:`Role` value string), ``layout``,
    ``transposed`` (matrices stored ``in x out``), ``params``
    (tensors) and ``param_names``, ready to pass to any ``torch.optim`` optimizer after adding
    options. Empty roles are left out. See :func:`hyperp.optim.assign_roles` for how roles are
    found and overridden.
    """
    grouped: dict[tuple[Role, str, bool], dict[str, Any]] = {}
    for info in assign_roles(model, head=head, roles=roles):
        layout = info.layout if info.role.on_sphere else "batch"
        transposed = info.transposed and info.role.on_sphere
        group = grouped.setdefault(
            (info.role, layout, transposed),
            {
                "role": info.role.value,
                "layout": layout,
                "transposed": transposed,
                "params": [],
                "param_names": [],
            },
        )
        group["params"].append(info.param)
        group["param_names"].append(info.name)
    order = {role: i for i, role in enumerate(Role)}
    return [grouped[key] for key in sorted(grouped, key=lambda k: (order[k[0]], *k[1:]))]


def build_optimizer(
    model: nn.Module,
    method: str = "hyperp",
    lr: float = 0.02,
    *,
    weight_decay: float = 0.0,
    depth_ratio: float = 1.0,
    width_ratio: float = 1.0,
    momentum: float = 0.95,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
    sphere: str = "matrix",
    ns_steps: int = 5,
    ns_coefficients: Coefficients = "hyperp",
    ns_dtype: torch.dtype | str | None = None,
    head: nn.Module | str | None = None,
    roles: Mapping[str, ParamRole | Role | str | Mapping] | None = None,
    replicate_group: torch.distributed.ProcessGroup | None = None,
    head_lr: float | None = None,
) -> GroupedOptimizer:
    """One optimizer that steps every parameter of ``model`` with one LR knob.

    - ``"hyperp"``: MuonH on hidden matrices, AdamH on the head, Adam on embedding and vectors,
      all at ``lr``; ``weight_decay`` (default 0, a first-order no-op on the sphere) applies to
      the sphere groups only.
    - ``"muon"``: the Muon baseline on hidden matrices with independent decay
      ``weight_decay · depth_ratio`` (``depth_ratio = d0/d``); Adam without decay elsewhere.
    - ``"adamw"``: AdamW everywhere, muP-style: matrices at ``lr · depth_ratio · width_ratio``
      (``width_ratio = n0/n``, the base width over this width); decay on matrices and head.

    Every group starts at its own fraction of ``lr``, so any ``torch.optim.lr_scheduler`` (which
    scales each group's initial LR) drives them together. Under DDP pass the data-parallel
    group as ``replicate_group`` (e.g. ``torch.distributed.group.WORLD``) so that ranks split
    Newton-Schulz instead of repeating it; FSDP2-sharded models need nothing. ``print(opt.describe())`` shows which
    tensor got which role, algorithm, shape and radius. ``head_lr`` (default: ``lr``) gives
    the output head its own LR, e.g. to sweep it apart from the other roles.

    ``roles`` names roles by parameter (see :func:`hyperp.optim.assign_roles`): a model sharded
    with FSDP2 before this call keeps its layouts and transpositions when given
    ``roles=role_map(model)`` taken before sharding.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr}")
    if head_lr is not None and not head_lr > 0:
        raise ValueError(f"head_lr must be positive, got {head_lr}")
    groups = param_groups(model, head=head, roles=roles)
    if not groups:
        raise ValueError(f"{type(model).__name__} has no trainable parameters to optimize")
    if method == "hyperp" and not any(Role(g["role"]).on_sphere for g in groups):
        raise ValueError(
            f"{type(model).__name__} has no matrix to put on a sphere: HyperP trains hidden "
            "matrices with MuonH and the output head with AdamH, and this model has only "
            "embeddings and vectors. Use method='adamw', or give a parameter the 'matrix' role "
            "with roles={'name': 'matrix'}."
        )
    if not any(Role(g["role"]) is Role.HEAD for g in groups):
        _warn_no_head(model, groups, _ALGORITHM[method][Role.MATRIX])
    common = {
        "betas": betas,
        "eps": eps,
        "momentum": momentum,
        "ns_steps": ns_steps,
        "ns_coefficients": ns_coefficients,
        "ns_dtype": ns_dtype,
        "sphere": sphere,
    }
    for group in groups:
        role = Role(group["role"])
        algorithm = _ALGORITHM[method][role]
        group["algorithm"] = algorithm
        group["lr"] = head_lr if role is Role.HEAD and head_lr is not None else lr
        group["weight_decay"] = 0.0
        if method == "hyperp" and role.on_sphere:
            group["weight_decay"] = weight_decay
        elif method == "muon" and role is Role.MATRIX:
            group["weight_decay"] = weight_decay * depth_ratio
            group["scale"], group["decay"] = "spectral", "independent"
        elif method == "adamw" and role in (Role.MATRIX, Role.HEAD):
            group["weight_decay"] = weight_decay
            if role is Role.MATRIX:
                group["lr"] = lr * depth_ratio * width_ratio
    return GroupedOptimizer(groups, replicate_group=replicate_group, **common)


def _warn_no_head(model: nn.Module, groups: list[dict[str, Any]], algorithm: str) -> None:
    """No output head was found: every matrix is a hidden one. Say which matrix a plain MLP or
    classifier would use as its output (the last one registered) and how to name the head."""
    getter = getattr(model, "get_output_embeddings", None)
    if getter is not None and getter() is not None:
        return  # a head tied to the input embedding: trained as the embedding, as role_map says
    matrices = {name for g in groups if g["role"] == Role.MATRIX.value for name in g["param_names"]}
    last = [(name, p) for name, p in model.named_parameters() if name in matrices]
    if not last:
        return
    name, param = last[-1]
    module = name.rsplit(".", 1)[0] if "." in name else name
    shape = "x".join(str(size) for size in param.shape)
    warnings.warn(
        f"{type(model).__name__} has no output head (no get_output_embeddings(), no head=...): "
        f"every matrix is trained as a hidden one with {algorithm}, the last, {name} ({shape}), "
        f"included. If {name} produces the outputs, name it: build_optimizer(model, ..., "
        f"head={module!r}) or roles={{{name!r}: 'head'}} (docs/method.md §2.1)",
        UserWarning,
        stacklevel=3,
    )
