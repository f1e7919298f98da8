import pytest
import torch

from hyperp.optim import KELLER_JORDAN_COEFFICIENTS, newton_schulz
from hyperp.optim.newton_schulz import resolve_coefficients


def matrix_with_spectrum(rows: int, cols: int, low: float = 0.05, high: float = 1.0, batch=()):
    """Random full-rank matrices whose singular values are spread over [low, high]·scale."""
    k = min(rows, cols)
    u = torch.linalg.qr(torch.randn(*batch, rows, k))[0]
    v = torch.linalg.qr(torch.randn(*batch, cols, k))[0]
    s = torch.empty(*batch, k).uniform_(low, high) * 3.7  # arbitrary overall scale
    return u @ torch.diag_embed(s) @ v.mT


@pytest.mark.parametrize(
    "shape", [(64, 64), (32, 96), (96, 32), (4, 48, 48), (2, 3, 40, 24), (1, 128)]
)
def test_singular_values_land_near_one(shape):
    G = matrix_with_spectrum(*shape[-2:], batch=shape[:-2])
    O = newton_schulz(G)
    assert O.shape == G.shape and O.dtype == G.dtype
    s = torch.linalg.svdvals(O)
    assert s.min() >= 0.97 and s.max() <= 1.04, (s.min().item(), s.max().item())


def test_output_keeps_singular_vectors():
    G = matrix_with_spectrum(48, 32)
    O = newton_schulz(G)
    u, _, vh = torch.linalg.svd(G, full_matrices=False)
    polar = u @ vh
    # O ≈ U S' Vᵀ with S' ≈ 1, so it is close to the polar factor U Vᵀ
    assert (O - polar).norm() / polar.norm() < 0.03


def test_batched_equals_per_matrix():
    G = torch.randn(5, 40, 24)
    batched = newton_schulz(G)
    single = torch.stack([newton_schulz(g) for g in G])
    torch.testing.assert_close(batched, single, rtol=1e-5, atol=1e-6)


def test_tall_is_transpose_of_wide():
    G = torch.randn(80, 30)
    torch.testing.assert_close(newton_schulz(G), newton_schulz(G.T).T)


# Largest relative (Frobenius) difference between NS(G) and NS(1000 G) over 20 seeds: 7.0e-7 in
# fp32, 9.8e-3 in bf16 (scaling by 1000 rounds the input anew: one bf16 ulp moves an entry).
@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_scale_invariant(dtype, tolerance):
    G = torch.randn(32, 48)
    small, large = newton_schulz(G, dtype=dtype), newton_schulz(1000.0 * G, dtype=dtype)
    assert (small - large).norm() / small.norm() < tolerance


def test_keller_jordan_option_differs_and_is_rough():
    G = matrix_with_spectrum(64, 64)
    kj = newton_schulz(G, coefficients="keller_jordan")
    s = torch.linalg.svdvals(kj)
    # the fixed coefficients do not converge to 1: singular values spread roughly over [0.6, 1.2]
    assert s.max() > 1.05 or s.min() < 0.95
    assert s.min() > 0.5 and s.max() < 1.3
    assert resolve_coefficients(KELLER_JORDAN_COEFFICIENTS, 3) == [KELLER_JORDAN_COEFFICIENTS] * 3


def test_bf16_working_precision():
    G = matrix_with_spectrum(64, 32)
    O = newton_schulz(G, dtype=torch.bfloat16)
    assert O.dtype == torch.float32
    s = torch.linalg.svdvals(O)
    assert s.min() > 0.9 and s.max() < 1.1


def test_rejects_vectors_and_bad_coefficients():
    with pytest.raises(ValueError, match="matrix"):
        newton_schulz(torch.randn(10))
    with pytest.raises(ValueError, match="coefficients"):
        newton_schulz(torch.randn(4, 4), coefficients="nope")
    with pytest.raises(ValueError, match="rows"):
        newton_schulz(torch.randn(4, 4), steps=2, coefficients=[(1.0, 0.0, 0.0)] * 3)


def test_zero_input_stays_finite():
    O = newton_schulz(torch.zeros(8, 8))
    assert torch.isfinite(O).all() and O.abs().max() == 0


def test_polar_express_coefficients_reach_small_singular_values():
    # Spectrum over [1e-3, 1] (after normalization): Polar Express's 5 steps lift the smallest
    # singular values far more than the paper's table (whose design range starts at 1e-2), and
    # 8 steps converge; its table repeats its fixed point beyond 8 steps.
    G = matrix_with_spectrum(64, 96, low=1e-3, batch=(2,)).double()
    G = G / torch.linalg.matrix_norm(G, ord=2, keepdim=True)[..., :1, :1]
    paper = torch.linalg.svdvals(newton_schulz(G, dtype=torch.float64))
    polar = torch.linalg.svdvals(
        newton_schulz(G, coefficients="polar_express", dtype=torch.float64)
    )
    assert polar.min() > 0.8 and polar.max() < 1.15
    assert paper.min() < polar.min()
    eight = newton_schulz(G, 8, coefficients="polar_express", dtype=torch.float64)
    assert (torch.linalg.svdvals(eight) - 1).abs().max() < 1e-2
    rows = resolve_coefficients("polar_express", 10)
    assert rows[8] == rows[9] == (1.875, -1.25, 0.375)


@pytest.mark.parametrize("shape", [(7, 20), (3, 33, 16), (2, 2)])
def test_symmetric_product_equals_the_plain_one(shape):
    G = torch.randn(*shape, dtype=torch.float64)
    torch.testing.assert_close(
        newton_schulz(G, dtype=torch.float64, symmetric=True), newton_schulz(G, dtype=torch.float64)
    )
