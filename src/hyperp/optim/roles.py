"""Structural assignment of parameters to optimizer roles (docs/method.md §2.1).

Every parameter of a model gets exactly one role:

- ``matrix``: a hidden weight matrix (or a bank of them, e.g. MoE experts): MuonH, on a sphere.
- ``head``: the matrix that produces vocabulary logits: AdamH, on a sphere.
- ``embedding``: an input lookup table: Adam, unconstrained.
- ``vector``: norm gains, biases, any 1-D parameter: Adam, unconstrained.

Roles are found in this order:

1. the caller's mapping (``roles={"name or glob": role}``), whose values are a role name, a
   :class:`~hyperp.roles.ParamRole` (role, layout, transposed) or such a dict;
2. a role attached to the tensor with :func:`set_role` (FSDP2's ``fully_shard`` replaces the
   tensors and drops it: name the roles instead, e.g. with :func:`role_map` before sharding);
3. the model's own mapping by name, when it has a ``parameter_roles()`` method returning
   ``{name: ParamRole}`` (the project's own models do; it survives sharding);
4. the output head: the weight of ``model.get_output_embeddings()`` (Hugging Face convention)
   or of the module the caller names with ``head=``;
5. parameters of ``nn.Embedding``/``nn.EmbeddingBag`` modules;
6. 0-D and 1-D parameters;
7. everything else with two or more dimensions is a hidden matrix.

A head whose weight is the same tensor as an input embedding (a tied head) is given the
``embedding`` role: the input table is not constrained by the method, and putting the shared
tensor on a sphere would change the embedding scale too. A warning says so and how to override.
"""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from hyperp.roles import ParamRole, Role, parse_role_spec

__all__ = [
    "ParamRole",
    "ParameterInfo",
    "Role",
    "assign_roles",
    "get_role",
    "role_map",
    "set_role",
]

_ROLE_ATTRIBUTE = "_hyperp_role"


def set_role(
    param: nn.Parameter,
    role: Role | str,
    *,
    layout: str | None = None,
    transposed: bool | None = None,
) -> nn.Parameter:
    """Attach a role to a parameter so that :func:`assign_roles` needs no guessing.

    ``layout`` and ``transposed`` are those of :class:`~hyperp.roles.ParamRole`; the Muon
    baseline's ``sqrt(fan_out/fan_in)`` scale depends on ``transposed``. The role lives on the
    tensor, so FSDP2's ``fully_shard`` (which replaces the tensors) drops it: to shard before
    :func:`~hyperp.optim.build_optimizer`, take ``role_map(model)`` first and pass it as
    ``roles=``, or give the model a ``parameter_roles()`` method.
    """
    setattr(param, _ROLE_ATTRIBUTE, ParamRole(Role.parse(role), layout, transposed))
    return param


def get_role(param: torch.Tensor) -> Role | None:
    """The role attached with :func:`set_role`, or ``None``."""
    spec = getattr(param, _ROLE_ATTRIBUTE, None)
    return None if spec is None else spec.role


@dataclass(frozen=True)
class ParameterInfo:
    """One parameter with its role and how it is read as matrices."""

    name: str
    param: nn.Parameter
    role: Role
    layout: str  # "batch" or "flatten"; only meaningful for tensors of 3+ dims
    reason: str  # why this role (shown in the optimizer's table)
    transposed: bool = False  # stored in x out (fan-in first), like transformers' Conv1D

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.param.shape)

    @property
    def spec(self) -> ParamRole:
        return ParamRole(self.role, self.layout, self.transposed)


def _named_unique_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    seen: set[int] = set()
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen or not param.requires_grad:
            continue
        seen.add(id(param))
        yield name, param


def _resolve_head(model: nn.Module, head: nn.Module | str | None) -> nn.Module | None:
    if isinstance(head, nn.Module):
        return head
    if isinstance(head, str):
        try:
            return model.get_submodule(head)
        except AttributeError:
            names = [n for n, _ in model.named_modules() if n]
            raise ValueError(
                f"head={head!r} names no submodule of {type(model).__name__}; "
                f"pass one of its module names, e.g. {names[-3:]}"
            ) from None
    getter = getattr(model, "get_output_embeddings", None)
    if callable(getter):
        found = getter()
        if isinstance(found, nn.Module):
            return found
    return None


def _stores_in_by_out(module: nn.Module) -> bool:
    """transformers' ``Conv1D`` (GPT-2 and kin): a linear layer whose weight is ``in x out``."""
    weight = getattr(module, "weight", None)
    return (
        type(module).__name__ == "Conv1D"
        and isinstance(weight, nn.Parameter)
        and weight.ndim == 2
        and getattr(module, "nf", None) == weight.shape[1]
    )


def _model_roles(model: nn.Module) -> dict[str, ParamRole]:
    getter = getattr(model, "parameter_roles", None)
    if not callable(getter):
        return {}
    return {name: parse_role_spec(value) for name, value in getter().items()}


def assign_roles(
    model: nn.Module,
    *,
    head: nn.Module | str | None = None,
    roles: Mapping[str, ParamRole | Role | str | Mapping] | None = None,
    warn_tied: bool = True,
) -> list[ParameterInfo]:
    """Give every trainable parameter of ``model`` a role (see the module docstring).

    ``roles`` maps parameter names (or ``fnmatch`` globs such as ``"*.lora_A"``) to a role,
    a :class:`~hyperp.roles.ParamRole` or a dict ``{"role", "layout", "transposed"}``, and
    takes precedence over everything else. A key that matches no parameter is an error, so a
    typo cannot silently leave a parameter on the wrong optimizer.
    """
    overrides = {key: parse_role_spec(value) for key, value in (roles or {}).items()}
    used_overrides: set[str] = set()
    by_model = _model_roles(model)

    head_module = _resolve_head(model, head)
    head_weight = getattr(head_module, "weight", None) if head_module is not None else None
    if head is not None and not isinstance(head_weight, nn.Parameter):
        raise ValueError(f"the head module {head!r} has no 'weight' parameter to treat as the head")

    embedding_params: set[int] = set()
    conv_params: set[int] = set()
    transposed_params: set[int] = set()
    for module in model.modules():
        if isinstance(module, nn.Embedding | nn.EmbeddingBag):
            embedding_params.update(id(p) for p in module.parameters(recurse=False))
        elif isinstance(module, nn.modules.conv._ConvNd):
            conv_params.update(id(p) for p in module.parameters(recurse=False))
        elif _stores_in_by_out(module):
            transposed_params.add(id(module.weight))

    infos: list[ParameterInfo] = []
    for name, param in _named_unique_parameters(model):
        matched = [key for key in overrides if key == name or fnmatch.fnmatchcase(name, key)]
        spec: ParamRole | None = None
        if matched:
            key = matched[0] if name not in overrides else name
            used_overrides.add(key)
            spec, reason = overrides[key], f"override {key!r}"
        elif getattr(param, _ROLE_ATTRIBUTE, None) is not None:
            spec, reason = getattr(param, _ROLE_ATTRIBUTE), "set_role"
        elif name in by_model:
            spec, reason = by_model[name], "set by the model"
        if spec is not None:
            role = spec.role
        elif head_weight is not None and param is head_weight:
            if id(param) in embedding_params:
                role, reason = Role.EMBEDDING, "tied head: input embedding"
                if warn_tied:
                    warnings.warn(
                        f"{name} is both the input embedding and the output head (tied). It is "
                        "trained as an embedding (Adam, no sphere); HyperP's head sphere needs an "
                        f"untied head. Pass roles={{{name!r}: 'head'}} to put it on a sphere anyway.",
                        stacklevel=2,
                    )
            else:
                role, reason = Role.HEAD, "output head"
        elif id(param) in embedding_params:
            role, reason = Role.EMBEDDING, "embedding module"
        elif param.ndim <= 1:
            role, reason = Role.VECTOR, f"{param.ndim}-D"
        else:
            role, reason = Role.MATRIX, f"{param.ndim}-D"
        if role.on_sphere and param.ndim < 2:
            raise ValueError(
                f"{name} has shape {tuple(param.shape)} but role {role.value!r} needs a matrix "
                "(2 or more dimensions); give it the 'vector' role"
            )
        layout = spec.layout if spec is not None and spec.layout is not None else None
        if layout is None:
            layout = "flatten" if id(param) in conv_params else "batch"
        transposed = spec.transposed if spec is not None else None
        if transposed is None:
            transposed = id(param) in transposed_params
        infos.append(ParameterInfo(name, param, role, layout, reason, transposed))

    unused = sorted(set(overrides) - used_overrides)
    if unused:
        raise ValueError(
            f"role overrides {unused} match no trainable parameter of {type(model).__name__}; "
            f"parameter names look like {[i.name for i in infos[:3]]}"
        )
    return infos


def role_map(
    model: nn.Module,
    *,
    head: nn.Module | str | None = None,
    roles: Mapping[str, ParamRole | Role | str | Mapping] | None = None,
) -> dict[str, ParamRole]:
    """Every trainable parameter's name with its resolved role, layout and transposition, as
    plain data. Take it before ``fully_shard`` and pass it to ``build_optimizer(roles=...)``
    after: the sharded model's tensors no longer carry what :func:`set_role` attached."""
    infos = assign_roles(model, head=head, roles=roles, warn_tied=False)
    return {info.name: info.spec for info in infos}
