"""Parameter roles as plain data (docs/method.md §2.1), shared by models and the optimizer.

A role says what the optimizer does with a parameter; a model (or a user) states it by
parameter name, so it survives anything that replaces the tensors, such as FSDP2's
``fully_shard``::

    {"blocks.0.mlp.w_up": ParamRole("matrix"), "head.weight": ParamRole("head"), ...}

No torch here: the model package and configuration readers import this module freely.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["ParamRole", "Role", "parse_role_spec"]


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


LAYOUTS = ("batch", "flatten")


@dataclass(frozen=True)
class ParamRole:
    """A parameter's role and how it is read as matrices.

    ``layout``: how a tensor of more than two dimensions is read, ``"batch"`` (leading
    dimensions index independent matrices, e.g. an expert bank ``E x out x in``) or
    ``"flatten"`` (one matrix ``shape[0] x prod(shape[1:])``, e.g. a convolution kernel);
    ``None`` leaves it to the module structure (convolutions flatten, the rest batch).
    ``transposed``: the matrix is stored ``in x out`` rather than ``nn.Linear``'s ``out x in``;
    ``None`` leaves it to the structure (transformers' ``Conv1D`` is detected).
    """

    role: Role
    layout: str | None = None
    transposed: bool | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "role", Role.parse(self.role))
        if self.layout is not None and self.layout not in LAYOUTS:
            raise ValueError(f"matrix layout must be 'batch' or 'flatten', got {self.layout!r}")
        if self.transposed is not None and not isinstance(self.transposed, bool):
            raise ValueError(f"transposed must be True or False, got {self.transposed!r}")


def parse_role_spec(value: ParamRole | Role | str | Mapping[str, Any]) -> ParamRole:
    """One entry of a role mapping: a :class:`ParamRole`, a role name, or a dict such as
    ``{"role": "matrix", "layout": "flatten", "transposed": False}`` (as a TOML table)."""
    if isinstance(value, ParamRole):
        return value
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - {"role", "layout", "transposed"})
        if unknown or "role" not in value:
            raise ValueError(
                f"a role entry needs 'role' and may have 'layout' and 'transposed'; got "
                f"{dict(value)!r}"
            )
        return ParamRole(value["role"], value.get("layout"), value.get("transposed"))
    return ParamRole(Role.parse(value))
