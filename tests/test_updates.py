"""The pure update functions over local tensors: on one process, with a plain Newton-Schulz and
plain norms, they are the optimizer classes' steps (and Adam's is torch's AdamW)."""

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from hyperp.optim import Muon, MuonH, newton_schulz, updates
from hyperp.optim.sharding import Grid, MatrixLayout, reduce_slice_norms
from hyperp.optim.updates import adam_update, muon_update, muonh_update, sphere_step


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


def _per_matrix_sphere_step(weights, directions, radii, lr, weight_decay):
    """docs/method.md §2.3 one matrix at a time: the loop the fused step replaces."""
    for w, d, radius in zip(weights, directions, radii):
        norm = d.float().square().sum(dim=(-2, -1), keepdim=True).sqrt().clamp_min(1e-30)
        w.sub_(d.float() * (lr * radius / norm / (1 - lr * weight_decay)))
        w.mul_(radius / w.square().sum(dim=(-2, -1), keepdim=True).sqrt())


def _sphere_views(seed):
    """Local ``(slices, rows, cols)`` views of 2-D matrices and banks, a zero direction in one
    bank slice, bf16 directions for one matrix; their layouts and per-slice radii."""
    generator = torch.Generator().manual_seed(seed)
    shapes = [(64, 32), (17, 200), (4, 16, 8), (256, 256), (3, 5, 7), (8, 8)]
    layouts = [MatrixLayout.of(shape, "batch", 1) for shape in shapes]
    weights = [
        layout.view(torch.randn(s, generator=generator)) for layout, s in zip(layouts, shapes)
    ]
    directions = [torch.randn(w.shape, generator=generator) for w in weights]
    directions[2][1] = 0
    directions[5] = directions[5].bfloat16()
    radii = [w.norm(dim=(-2, -1), keepdim=True) for w in weights]
    return layouts, weights, directions, radii


def test_fused_sphere_step_is_the_per_matrix_loop():
    # All matrices at once (multi-tensor norms and updates) against one at a time, fp32, 3
    # steps: they differ by rounding only. Measured over 20 seeds: at most 7.7e-7 of max |W|
    # (about 6 ulps); the bound is 2e-6.
    for seed in range(5):
        layouts, weights, directions, radii = _sphere_views(seed)
        loop = [w.clone() for w in weights]

        def norms(views, layouts=layouts):
            return [n.reshape(-1, 1, 1) for n in reduce_slice_norms(layouts, Grid(), views)]

        for _ in range(3):
            sphere_step(weights, directions, radii, lr=0.05, weight_decay=0.1, sphere_norms=norms)
            _per_matrix_sphere_step(loop, directions, radii, lr=0.05, weight_decay=0.1)
        for fused, looped, radius in zip(weights, loop, radii):
            torch.testing.assert_close(fused, looped, rtol=0, atol=2e-6 * looped.abs().max())
            torch.testing.assert_close(fused.norm(dim=(-2, -1), keepdim=True), radius)


class _CountOps(TorchDispatchMode):
    """Counts the operators that compute (views, which launch nothing, are left out)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += not func.is_view
        return func(*args, **(kwargs or {}))


def _sphere_step_ops(matrices: int, monkeypatch) -> int:
    """Operators the MuonH class's sphere step dispatches on an expert bank and ``matrices``
    matrices of two shapes."""
    torch.manual_seed(0)
    shapes = [(24, 16), (16, 40)]
    params = [nn.Parameter(torch.randn(4, 8, 8))]
    params += [nn.Parameter(torch.randn(shapes[i % 2])) for i in range(matrices)]
    optimizer = MuonH(params, lr=0.02, ns_dtype="fp32")
    for p in params:
        p.grad = torch.randn_like(p)
    counter = _CountOps()

    def counted(*args, **kwargs):
        with counter:
            sphere_step(*args, **kwargs)

    monkeypatch.setattr(updates, "sphere_step", counted)
    optimizer.step()
    return counter.count


def test_sphere_step_dispatches_as_many_operators_for_many_matrices(monkeypatch):
    # A GPU runs a loop of small kernels per matrix at the speed of kernel launches: the sphere
    # step's operator count does not grow with the number of matrices (they share multi-tensor
    # calls; an expert bank has one batched norm per pass).
    few, many = _sphere_step_ops(2, monkeypatch), _sphere_step_ops(40, monkeypatch)
    assert many == few, (few, many)
