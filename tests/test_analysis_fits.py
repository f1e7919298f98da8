"""The fits of docs/method.md §6 on synthetic data with known answers, and on the paper's Table 4."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hyperp.analysis import (
    FewPointsWarning,
    fit_loss_vs_compute,
    fit_lr_optimum,
    fit_offset_power_law,
    fit_power_law,
    interpolated_leverage,
    leverage,
    sweep_sensitivity,
)

# The paper's Table 4 (docs/method.md §1.4): d8 dense, optimum LR per token budget.
TABLE4_TOKENS = np.array([10.4e9, 20.8e9, 41.6e9, 83.2e9, 166.4e9])
TABLE4_LR = np.array([0.01515, 0.01208, 0.00958, 0.00772, 0.00635])


def synthetic_sweep(optimum_lr, curvature=0.04, floor=3.0, noise=0.0, points=9, span=2.0, seed=0):
    rng = np.random.default_rng(seed)
    lrs = optimum_lr * np.exp(np.linspace(-span, span, points))
    losses = floor + curvature * np.log(lrs / optimum_lr) ** 2 + rng.normal(0, noise, points)
    return lrs, losses


def test_exact_parabola_recovers_optimum_coefficients_and_zero_residuals():
    lrs, losses = synthetic_sweep(0.012, curvature=0.05, floor=2.7)
    result = fit_lr_optimum(lrs, losses, bootstrap=200)
    assert result.inside and result.reason is None
    assert result.lr == pytest.approx(0.012, rel=1e-9)
    assert result.loss == pytest.approx(2.7, abs=1e-12)
    a, b, _ = result.coefficients
    assert a == pytest.approx(0.05, rel=1e-9)
    # b = -2 a ln(lr*) in uncentred ln(lr).
    assert b == pytest.approx(-2 * 0.05 * math.log(0.012), rel=1e-9)
    assert np.max(np.abs(result.residuals)) < 1e-12
    assert np.allclose(result.curve(lrs), losses)


def test_noisy_sweeps_interval_contains_fit_and_usually_the_truth():
    truth = 0.02
    covered = 0
    trials = 20
    for seed in range(trials):
        lrs, losses = synthetic_sweep(truth, noise=0.004, seed=seed)
        result = fit_lr_optimum(lrs, losses, bootstrap=500, seed=seed)
        low, high = result.lr_interval
        assert result.inside
        assert low <= result.lr <= high
        assert low < high
        covered += low <= truth <= high
    # A 95% percentile bootstrap on 9 points undercovers somewhat; 16 of 20 is a loose floor.
    assert covered >= 16


def test_interval_narrows_with_less_noise():
    lrs, noisy = synthetic_sweep(0.02, noise=0.01, seed=3)
    _, quiet = synthetic_sweep(0.02, noise=0.001, seed=3)
    wide = fit_lr_optimum(lrs, noisy).lr_interval
    narrow = fit_lr_optimum(lrs, quiet).lr_interval
    assert narrow[1] / narrow[0] < wide[1] / wide[0]


def test_fewer_than_three_points_is_a_clear_error():
    with pytest.raises(ValueError, match="at least 3 distinct learning rates"):
        fit_lr_optimum([0.01, 0.02], [3.0, 2.9])
    # Repeating an LR does not make a third point.
    with pytest.raises(ValueError, match="at least 3 distinct"):
        fit_lr_optimum([0.01, 0.02, 0.02], [3.0, 2.9, 2.91])


def test_monotone_sweep_is_not_an_optimum_and_is_not_extrapolated():
    # Every swept LR far below the true optimum (0.1): the loss falls monotonically.
    lrs = np.array([1e-4, 2e-4, 4e-4, 8e-4, 1.6e-3])
    losses = 3.0 + 0.04 * np.log(lrs / 0.1) ** 2
    result = fit_lr_optimum(lrs, losses)
    assert not result.inside
    assert math.isnan(result.lr) and math.isnan(result.loss)
    assert "above the largest swept LR" in result.reason
    assert "add larger learning rates" in result.reason
    assert result.best_lr == pytest.approx(lrs.max())
    assert result.vertex_lr > lrs.max()  # still available, explicitly named
    assert all(math.isnan(v) for v in result.lr_interval)


def test_downward_parabola_has_no_minimum():
    lrs = np.array([1e-3, 3e-3, 1e-2, 3e-2, 1e-1])
    losses = 3.0 - 0.02 * np.log(lrs / 1e-2) ** 2
    result = fit_lr_optimum(lrs, losses)
    assert not result.inside
    assert result.coefficients[0] < 0
    assert "opens downward" in result.reason
    assert math.isnan(result.vertex_lr)
    assert result.best_loss == pytest.approx(losses.min())


def test_nan_losses_are_left_out_and_counted():
    lrs, losses = synthetic_sweep(0.02, points=7)
    losses[-1] = math.nan  # a diverged run
    result = fit_lr_optimum(lrs, losses)
    assert result.dropped == 1 and result.n_points == 6
    assert result.lr == pytest.approx(0.02, rel=1e-6)
    losses[:5] = math.nan
    with pytest.raises(ValueError, match="NaN/inf loss"):
        fit_lr_optimum(lrs, losses)


def test_negative_learning_rate_is_rejected():
    with pytest.raises(ValueError, match="positive"):
        fit_lr_optimum([-0.01, 0.01, 0.02], [3, 2.9, 3])


def test_sensitivity_is_zero_on_an_exact_parabola_and_falls_with_k():
    lrs, exact = synthetic_sweep(0.02, points=7)
    result = sweep_sensitivity(lrs, exact, 3, window=None)
    assert result.n_subsets == math.comb(7, 3) == result.n_valid
    assert result.lr_relative_error < 1e-9 and result.loss_relative_error < 1e-12

    _, noisy = synthetic_sweep(0.02, points=7, noise=0.005, seed=1)
    errors = [sweep_sensitivity(lrs, noisy, k, window=None).lr_relative_error for k in (3, 5, 7)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] == pytest.approx(0.0, abs=1e-12)  # k = n is the all-point fit itself
    with pytest.raises(ValueError, match="k must be between 3"):
        sweep_sensitivity(lrs, noisy, 8, window=None)
    # By default the subsets are those of the points the optimum is fitted to (5 of the 7).
    assert sweep_sensitivity(lrs, noisy, 3).n_points == 5
    with pytest.raises(ValueError, match="number of points fitted"):
        sweep_sensitivity(lrs, noisy, 6)


def test_table4_token_exponent_linear_space_and_loglog():
    fit = fit_power_law(TABLE4_TOKENS, TABLE4_LR)
    assert round(fit.exponent, 3) == -0.320
    assert fit.loglog_exponent == pytest.approx(-0.316, abs=1e-3)
    assert fit.loo_relative_errors.shape == (5,)
    assert fit.loo_mean_relative_error < 0.05
    # The fit reproduces the table within 2.5% and extrapolates sensibly.
    assert np.allclose(fit.predict(TABLE4_TOKENS), TABLE4_LR, rtol=0.025)
    assert fit.predict(332.8e9) < TABLE4_LR[-1]


def test_known_power_law_is_recovered_under_noise():
    rng = np.random.default_rng(0)
    batch = np.array([2.0**18, 2**19, 2**20, 2**21, 2**22])
    lr = 3e-5 * batch**0.5 * np.exp(rng.normal(0, 0.01, batch.size))
    fit = fit_power_law(batch, lr)
    assert fit.exponent == pytest.approx(0.5, abs=0.02)
    assert fit.loglog_exponent == pytest.approx(0.5, abs=0.02)
    assert fit.coefficient == pytest.approx(3e-5, rel=0.15)
    exact = fit_power_law(batch, 3e-5 * batch**0.5)
    assert np.max(np.abs(exact.loo_relative_errors)) < 1e-6


def test_power_law_degenerate_inputs():
    with pytest.raises(ValueError, match="at least 2 distinct scales"):
        fit_power_law([1e9, 1e9, 1e9], [0.01, 0.011, 0.012])
    with pytest.raises(ValueError, match="positive"):
        fit_power_law([1e9, 2e9], [0.01, -0.01])
    with pytest.warns(FewPointsWarning):
        two = fit_power_law([1e9, 2e9], [0.01, 0.008])
    assert two.loo_relative_errors.size == 0 and math.isnan(two.loo_mean_relative_error)
    assert two.exponent == pytest.approx(math.log2(0.8), rel=1e-6)


def test_loss_vs_compute_recovers_offset_curve_and_inverts():
    flops = np.logspace(18, 22, 7)
    losses = 40.0 * flops**-0.08 + 1.9
    curve = fit_loss_vs_compute(flops, losses)
    assert curve.b == pytest.approx(0.08, rel=1e-3)
    amplitude, floor = curve.A, curve.E
    assert floor == pytest.approx(1.9, rel=1e-3)
    assert amplitude == pytest.approx(40.0, rel=1e-2)
    assert np.allclose(curve(flops), losses, rtol=1e-6)
    assert np.allclose(curve.inverse(losses), flops, rtol=1e-4)
    assert math.isnan(curve.inverse(1.0))  # below the floor: unreachable


def test_loss_vs_compute_bounds_hold():
    flops = np.logspace(18, 21, 6)
    # Data that would like a negative offset: E must stay at its bound 0.
    losses = 30.0 * flops**-0.05 - 0.5
    curve = fit_loss_vs_compute(flops, losses)
    assert curve.A >= 0 and curve.b >= 0
    assert 0.0 <= curve.E <= losses.min()
    pure = fit_loss_vs_compute(flops, 30.0 * flops**-0.05, offset=False)
    assert pure.E == 0.0 and not pure.offset
    assert pure.b == pytest.approx(0.05, rel=1e-3)


def test_loss_vs_compute_too_few_points_names_the_fix():
    with pytest.raises(ValueError, match="offset=False"):
        fit_loss_vs_compute([1e18, 1e19], [3.0, 2.8])
    with pytest.raises(ValueError, match="at least 2 distinct compute values"):
        fit_loss_vs_compute([1e18], [3.0], offset=False)


def test_leverage_returns_known_compute_ratio():
    ratio = 1.58
    baseline_flops = np.logspace(19, 22, 5)
    baseline_losses = 60.0 * baseline_flops**-0.09 + 1.8
    # The method reaches the baseline's loss with `ratio` times less compute.
    method_flops = np.logspace(18.5, 22, 6)
    method_losses = 60.0 * (method_flops * ratio) ** -0.09 + 1.8
    curve = fit_loss_vs_compute(method_flops, method_losses)
    values = leverage(curve, baseline_flops, baseline_losses)
    assert isinstance(values, np.ndarray) and values.shape == (5,)
    assert np.allclose(values, ratio, rtol=1e-3)


def test_leverage_is_nan_where_the_curve_cannot_reach_the_loss():
    flops = np.logspace(18, 21, 5)
    curve = fit_loss_vs_compute(flops, 20.0 * flops**-0.1 + 2.0)
    values = leverage(curve, [1e20, 1e20], [curve(1e19), curve.E - 0.1])
    assert values[0] == pytest.approx(10.0, rel=1e-3)
    assert math.isnan(values[1])


def test_offset_power_law_recovers_optimal_loss_against_sparsity():
    sparsity = np.array([1.0, 2, 4, 8, 16])
    exact = fit_offset_power_law(sparsity, 0.3 * sparsity**-0.4 + 2.1)
    assert exact.exponent == pytest.approx(-0.4, abs=1e-6)
    assert exact.offset == pytest.approx(2.1, abs=1e-6)
    assert np.max(np.abs(exact.loo_relative_errors)) < 1e-6
    assert exact.predict(32.0) == pytest.approx(0.3 * 32**-0.4 + 2.1, rel=1e-6)
    with pytest.raises(ValueError, match="at least 3 distinct scales"):
        fit_offset_power_law([1.0, 2.0, 2.0], [2.5, 2.4, 2.41])


def test_linear_sweep_is_flagged_as_flat_with_the_direction_to_extend():
    lrs = np.array([0.01, 0.02, 0.04, 0.08])
    falling = fit_lr_optimum(lrs, 3.0 - 0.1 * np.log(lrs))
    assert not falling.inside and math.isnan(falling.vertex_lr)
    assert "linear in ln(lr)" in falling.reason and "add larger learning rates" in falling.reason
    rising = fit_lr_optimum(lrs, 3.0 + 0.1 * np.log(lrs))
    assert "add smaller learning rates" in rising.reason
    assert rising.best_lr == 0.01


def test_three_point_sweep_has_an_optimum_but_no_bootstrap_interval():
    lrs, losses = synthetic_sweep(0.02, points=3, span=1.0, noise=0.001)
    result = fit_lr_optimum(lrs, losses)
    assert result.inside and math.isfinite(result.lr)
    assert all(math.isnan(v) for v in result.lr_interval)


# --- Robust fits: a window around the best point, reliability flags, few-point warnings ------


def test_window_keeps_diverged_and_far_points_out_of_the_parabola():
    # Two diverged LRs above the optimum and slow learning far below it: fitted to every point,
    # the parabola is bent by the far ones; the window around the best point is not.
    lrs = np.array([0.003, 0.01, 0.03, 0.1, 0.2, 0.3, 0.6, 1.0])
    losses = np.array([9.6, 8.7, 7.7, 6.95, 6.9, 6.93, math.inf, math.nan])
    everything = fit_lr_optimum(lrs, losses, window=None, bootstrap=0)
    assert not everything.usable  # the all-point vertex lies beyond the finite LRs
    result = fit_lr_optimum(lrs, losses, bootstrap=0)
    assert result.usable and 0.1 < result.lr < 0.3
    assert result.loss == pytest.approx(6.9, abs=0.05)  # near the best observed, not far below
    assert result.n_fit == 4 and result.excluded == 2 and result.dropped == 2
    assert set(result.lrs) == {0.03, 0.1, 0.2, 0.3}  # never past the diverged 0.6


def test_a_parabola_bent_by_a_far_point_is_flagged_unreliable():
    # The point at 0.1 rises steeply (the edge of stability): the parabola through the window
    # misses the best point and dips 0.29 below every observed loss.
    lrs = 0.05 * math.sqrt(2) ** np.arange(-3, 4)
    losses = np.array([5.2, 4.6, 4.35, 4.3, 4.32, 6.5, 7.4])
    result = fit_lr_optimum(lrs, losses, bootstrap=0)
    assert result.inside and not result.reliable and not result.usable
    assert "misses the best point" in result.unreliable
    # With a known noise the dip itself is named.
    noisy = fit_lr_optimum(lrs, losses, noise=0.01, bootstrap=0)
    assert "below every observed loss" in noisy.unreliable


def test_reliability_checks_pass_good_sweeps():
    rng = np.random.default_rng(0)
    flagged = 0
    for _ in range(100):
        optimum = math.log(0.07) + rng.normal(0, 0.2)
        grid = math.log(0.0354) + np.arange(6) * math.log(2) / 2
        losses = 4.5 + 0.15 * (grid - optimum) ** 2 + rng.normal(0, 0.01, 6)
        result = fit_lr_optimum(np.exp(grid), losses, noise=0.01, bootstrap=0)
        flagged += result.inside and not result.reliable
    assert flagged == 0


def test_few_point_fits_warn():
    with pytest.warns(FewPointsWarning, match="2 scales"):
        fit_power_law([1e9, 2e9], [0.01, 0.008])
    with pytest.warns(FewPointsWarning, match="2 compute values"):
        fit_loss_vs_compute([1e18, 1e19], [3.0, 2.8], offset=False)
    with pytest.warns(FewPointsWarning, match="3 compute values"):
        fit_loss_vs_compute([1e18, 1e19, 1e20], [3.0, 2.8, 2.7])


def test_interpolated_leverage_reads_measured_points_without_a_fit():
    ratio = 1.6
    flops = np.array([1e18, 4e18, 1.6e19])
    # Loss linear in ln C, so the piecewise-linear reading is exact.
    method = 5.0 - 0.2 * np.log(flops * ratio / 1e18)
    baseline_flops = np.array([2e18, 8e18])
    baseline = 5.0 - 0.2 * np.log(baseline_flops / 1e18)
    values = interpolated_leverage(flops, method, baseline_flops, baseline)
    assert np.allclose(values, ratio)
    # Beyond the method's measured losses: the end segment continues half its length, no more.
    far = interpolated_leverage(flops, method, [1e21], [5.0 - 0.2 * np.log(1e3)])
    assert math.isnan(far[0])
    near = interpolated_leverage(flops, method, [2.4e19], [5.0 - 0.2 * np.log(24)])
    assert near[0] == pytest.approx(ratio)
