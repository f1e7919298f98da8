"""The pure update functions over local tensors: on one process, with a plain Newton-Schulz and
plain norms, they are the optimizer classes' steps (and Adam's is torch's AdamW)."""

import torch
from torch import nn

from hyperp.optim import Muon, MuonH, newton_schulz
from hyperp.optim.updates import adam_update, muon_update, muonh_update


def orthogonalize(tensors, coefficients="hyperp"):
    return [newton_schulz(t, coefficients=coefficients, dtype=torch.float32) for t in tensors]


def test_muonh_update_is_the_optimizer_step():
    torch.manual_seed(0)
    weight, grads = torch.randn(16, 8), [torch.randn(16, 8) for _ in range(3)]
    param = nn.Parameter(weight.clone())
    optimizer = MuonH([param], lr=0.05, ns_dtype="fp32")
    mine, buffer = weight.clone(), torch.zeros_like(weight)
    radius = weight.norm().reshape(1, 1, 1)
    for grad in grads:
        param.grad = grad.clone()
        optimizer.step()
        muonh_update(
            [mine], [grad], [buffer], [radius], lr=0.05, momentum=0.95, nesterov=True,
            weight_decay=0.0, orthogonalize=orthogonalize,
            sphere_norms=lambda ts: [t.norm().reshape(1, 1, 1) for t in ts],
            views=lambda ts: [t.view(1, *t.shape) for t in ts],
        )  # fmt: skip
    torch.testing.assert_close(mine, param.detach(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(mine.norm(), weight.norm())


def test_muon_update_is_the_optimizer_step():
    torch.manual_seed(1)
    weight, grad = torch.randn(12, 6), torch.randn(12, 6)
    param = nn.Parameter(weight.clone())
    optimizer = Muon.like_torch([param], lr=0.01, weight_decay=0.1, ns_dtype="fp32")
    param.grad = grad.clone()
    optimizer.step()
    mine = weight.clone()
    muon_update(
        [mine], [grad], [torch.zeros_like(grad)], lr=0.01, momentum=0.95, nesterov=True,
        decay=0.01 * 0.1, scales=[2**0.5],
        orthogonalize=lambda ts: orthogonalize(ts, "keller_jordan"),
    )  # fmt: skip
    torch.testing.assert_close(mine, param.detach(), rtol=0, atol=0)


def test_adam_update_is_adamw():
    torch.manual_seed(2)
    weight, grads = torch.randn(10, 4), [torch.randn(10, 4) for _ in range(4)]
    param = nn.Parameter(weight.clone())
    reference = torch.optim.AdamW([param], lr=0.01, betas=(0.9, 0.95), weight_decay=0.1)
    mine, m, v = weight.clone(), torch.zeros_like(weight), torch.zeros_like(weight)
    for step, grad in enumerate(grads, 1):
        param.grad = grad.clone()
        reference.step()
        adam_update([mine], [grad], [m], [v], [step], lr=0.01, betas=(0.9, 0.95), eps=1e-8,
                    weight_decay=0.1)  # fmt: skip
    torch.testing.assert_close(mine, param.detach(), rtol=1e-6, atol=1e-7)
