"""A model with no recognisable output head (a plain MLP): build_optimizer says which matrix a
reader would take for the output, that it goes to MuonH like the rest, and how to name the head."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from hyperp.optim import build_optimizer


def mlp() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)
    )


def test_no_head_warns_naming_the_last_matrix_and_the_fix():
    with pytest.warns(UserWarning, match="no output head") as caught:
        optimizer = build_optimizer(mlp(), "hyperp", lr=0.02)
    (message,) = [str(w.message) for w in caught if "no output head" in str(w.message)]
    assert "the last, 4.weight (4x32)" in message and "muonh" in message
    assert "head='4'" in message and "roles={'4.weight': 'head'}" in message
    assert "4.weight" in optimizer.describe()


@pytest.mark.parametrize("how", [{"head": "4"}, {"roles": {"4.weight": "head"}}])
def test_naming_the_head_as_the_warning_says_silences_it_and_puts_it_on_adamh(how):
    model = mlp()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        optimizer = build_optimizer(model, "hyperp", lr=0.02, **how)
    line = next(row for row in optimizer.describe().splitlines() if row.startswith("4.weight"))
    assert "head" in line and "adamh" in line
    x = torch.randn(8, 16)
    model(x).square().mean().backward()
    optimizer.step()
