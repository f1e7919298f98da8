"""Optimizers of METHOD.md section 2 and the structural parameter roles."""

from hyperp.optim.roles import ParameterInfo, Role, assign_roles, get_role, set_role

__all__ = ["ParameterInfo", "Role", "assign_roles", "get_role", "set_role"]
