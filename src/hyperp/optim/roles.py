"""Structural assignment of parameters to optimizer roles (docs/method.md §2.1).

Every parameter of a model gets exactly one role:

- ``matrix``: a hidden weight matrix (or a bank of them, e.g. MoE experts): MuonH, on a sphere.
- ``head``: the matrix that produces vocabulary logits: AdamH, on a sphere.
- ``embedding``: an input lookup table: Adam, unconstrained.
- ``vector``: norm gains, biases, any 1-D parameter: Adam, unconstrained.

Roles are found from the module structure, never from name substrings, in this order:

1. an explicit override from the caller (``roles={"name or glob": role}``);
2. a role a model attached to the parameter itself with :func:`set_role` (our own models do this);
3. the output head: the weight of ``model.get_output_embeddings()`` (Hugging Face convention)
   or of the module the caller names with ``head=``;
4. parameters of ``nn.Embedding``/``nn.EmbeddingBag`` modules;
5. 0-D and 1-D parameters;
6. everything else with two or more dimensions is a hidden matrix.

A head whose weight is the same tensor as an input embedding (a tied head) is given the
``embedding`` role: the input table is not constrained by the method, and putting the shared
tensor on a sphere would change the embedding scale too. A warning says so and how to override.
"""

from __future__ import annotations

import enum
import fnmatch
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "ParameterInfo",
    "Role",
    "assign_roles",
    "get_role",
    "set_role",
]

_ROLE_ATTRIBUTE = "_hyperp_role"
_LAYOUT_ATTRIBUTE = "_hyperp_matrix_layout"
_TRANSPOSED_ATTRIBUTE = "_hyperp_transposed"


class Role(enum.StrEnum):
    """What an optimizer does with a parameter (docs/method.md §2.1)."""

    MATRIX = "matrix"
    HEAD = "head"
    EMBEDDING = "embedding"
    VECTOR = "vector"

    @property
    def on_sphere(self) -> bool:
        return self in (Role.MATRIX, Role.HEAD)

    @classmethod
    def parse(cls, value: Role | str) -> Role:
        if isinstance(value, Role):
            return value
        try:
            return cls(str(value).lower())
        except ValueError:
            names = ", ".join(r.value for r in cls)
            raise ValueError(f"unknown parameter role {value!r}; use one of: {names}") from None


def set_role(
    param: nn.Parameter,
    role: Role | str,
    *,
    layout: str | None = None,
    transposed: bool | None = None,
) -> nn.Parameter:
    """Attach a role to a parameter so that :func:`assign_roles` needs no guessing.

    ``layout`` says how a tensor of more than two dimensions is read as matrices:
    ``"batch"`` (leading dimensions index independent matrices, e.g. an expert bank
    ``E x out x in``; the default) or ``"flatten"`` (one matrix ``shape[0] x prod(shape[1:])``,
    e.g. a convolution kernel). ``transposed`` says a matrix is stored ``in x out`` rather than
    ``nn.Linear``'s ``out x in`` (transformers' ``Conv1D`` is detected without it); the Muon
    baseline's ``sqrt(fan_out/fan_in)`` scale depends on it.
    """
    setattr(param, _ROLE_ATTRIBUTE, Role.parse(role))
    if layout is not None:
        setattr(param, _LAYOUT_ATTRIBUTE, _check_layout(layout))
    if transposed is not None:
        setattr(param, _TRANSPOSED_ATTRIBUTE, bool(transposed))
    return param


def get_role(param: torch.Tensor) -> Role | None:
    """The role attached with :func:`set_role`, or ``None``."""
    return getattr(param, _ROLE_ATTRIBUTE, None)


def _check_layout(layout: str) -> str:
    if layout not in ("batch", "flatten"):
        raise ValueError(f"matrix layout must be 'batch' or 'flatten', got {layout!r}")
    return layout


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


def assign_roles(
    model: nn.Module,
    *,
    head: nn.Module | str | None = None,
    roles: Mapping[str, Role | str] | None = None,
    warn_tied: bool = True,
) -> list[ParameterInfo]:
    """Give every trainable parameter of ``model`` a role (see the module docstring).

    ``roles`` maps parameter names (or ``fnmatch`` globs such as ``"*.lora_A"``) to a role and
    takes precedence over everything else. A key that matches no parameter is an error, so a
    typo cannot silently leave a parameter on the wrong optimizer.
    """
    overrides = {key: Role.parse(value) for key, value in (roles or {}).items()}
    used_overrides: set[str] = set()

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
        layout = getattr(
            param, _LAYOUT_ATTRIBUTE, "flatten" if id(param) in conv_params else "batch"
        )
        matched = [key for key in overrides if key == name or fnmatch.fnmatchcase(name, key)]
        if matched:
            key = matched[0] if name not in overrides else name
            used_overrides.add(key)
            role, reason = overrides[key], f"override {key!r}"
        elif get_role(param) is not None:
            role, reason = get_role(param), "set by the model"
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
        transposed = getattr(param, _TRANSPOSED_ATTRIBUTE, id(param) in transposed_params)
        infos.append(ParameterInfo(name, param, role, layout, reason, transposed))

    unused = sorted(set(overrides) - used_overrides)
    if unused:
        raise ValueError(
            f"role overrides {unused} match no trainable parameter of {type(model).__name__}; "
            f"parameter names look like {[i.name for i in infos[:3]]}"
        )
    return infos
