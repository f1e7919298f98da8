"""Optimizers of docs/method.md §2 and the structural parameter roles.

Three lines to train any model with HyperP::

    from hyperp.optim import build_optimizer
    opt = build_optimizer(model, method="hyperp", lr=0.02)
    loss.backward(); opt.step(); opt.zero_grad()
"""

from hyperp.optim.build import METHODS, build_optimizer, param_groups
from hyperp.optim.newton_schulz import (
    HYPERP_COEFFICIENTS,
    KELLER_JORDAN_COEFFICIENTS,
    newton_schulz,
)
from hyperp.optim.optimizers import AdamH, GroupedOptimizer, Muon, MuonH, SphereError
from hyperp.optim.roles import (
    ParameterInfo,
    ParamRole,
    Role,
    assign_roles,
    get_role,
    role_map,
    set_role,
)

__all__ = [
    "HYPERP_COEFFICIENTS",
    "KELLER_JORDAN_COEFFICIENTS",
    "METHODS",
    "AdamH",
    "GroupedOptimizer",
    "Muon",
    "MuonH",
    "ParamRole",
    "ParameterInfo",
    "Role",
    "SphereError",
    "assign_roles",
    "build_optimizer",
    "get_role",
    "newton_schulz",
    "param_groups",
    "role_map",
    "set_role",
]
