"""Intervals of designed studies (hyperp.analysis.bootstrap): coverage of known truths in
synthetic repeats, pairing by seed, and honest failure when the noise cannot be estimated."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hyperp.analysis import (
    CellTable,
    Sweep,
    bootstrap_cells,
    bootstrap_sweeps,
    fit_lr_optimum,
    percentile_interval,
)
from hyperp.analysis.fits import fit_lr_optima

HALF_OCTAVE = math.log(2) / 2


def synthetic_study(
    rng, exponent, *, seeds=2, noise=0.02, seed_offset=0.05, tilt=0.0, scales=(32, 64, 128)
):
    """LR curves at each scale whose optimum is 0.05 (scale / 32)^exponent: 7 half-octave LRs
    (the grid placed around the optimum as a sweep file would be, not centred on it), every LR
    at every seed; a seed shifts a whole curve and tilts it by a slope in ln(lr) of standard
    deviation ``tilt`` (which moves that seed's optimum by tilt / 0.4 in ln lr)."""
    sweeps = []
    for scale in scales:
        optimum = math.log(0.05) + exponent * math.log(scale / 32)
        start = round((optimum + rng.normal(0, 0.3)) / HALF_OCTAVE - 3) * HALF_OCTAVE
        grid = start + HALF_OCTAVE * np.arange(7)
        offsets = rng.normal(0, seed_offset, seeds)
        tilts = rng.normal(0, tilt, seeds) if tilt else np.zeros(seeds)
        losses = 4.0 + 0.2 * (grid[:, None] - optimum) ** 2 + offsets[None, :]
        losses = losses + tilts[None, :] * (grid[:, None] - optimum)
        losses = losses + rng.normal(0, noise, losses.shape)
        lrs = np.repeat(np.exp(grid), seeds)
        sweeps.append(Sweep.from_runs(lrs, np.tile(np.arange(seeds), grid.size), losses.ravel()))
    return sweeps, np.array(scales, dtype=float)


def slope_samples(samples, scales):
    x = np.log(scales) - np.log(scales).mean()
    replicates = np.stack([s.log_lr for s in samples], axis=1)
    return (replicates - replicates.mean(axis=1, keepdims=True)) @ x / (x @ x)


def test_bootstrap_interval_covers_the_true_exponent():
    """95% intervals of the exponent of lr* against scale cover the truth in >= 90% of 150
    synthetic studies (each with its own noise, seeds and grid placement)."""
    rng = np.random.default_rng(1)
    truth, covered, repeats = 0.15, 0, 150
    for index in range(repeats):
        sweeps, scales = synthetic_study(rng, truth)
        samples, noise = bootstrap_sweeps(sweeps, replicates=600, seed=index)
        assert noise.known and noise.degrees >= 9  # less the parabolas, offsets and tilts
        low, high = percentile_interval(slope_samples(samples, scales))
        covered += low <= truth <= high
    assert covered / repeats >= 0.90


def test_intervals_cover_seed_tilts():
    """Seeds that tilt their curve in ln(lr) (here each seed's own optimum moves by about 0.1
    in ln lr, five times what the run noise moves it) must widen the intervals: 95% intervals
    of the exponent of lr* against scale, and of one curve's ln lr*, cover the truth in at
    least 90% of 200 synthetic studies. Binomial reasoning: at the nominal 95%, 200 trials
    cover 190 times on average with a standard deviation of sqrt(200 x 0.95 x 0.05) = 3.1, so
    fewer than 180 (below 90%) happens with probability about 0.3%; an interval covering only
    85% of the time passes with probability about 2%, one at 80% with probability below 0.1%;
    resampling run noise alone (with a constant seed offset) covers about 65% here. Most intervals must be bounded, so
    coverage is not bought with replicates that give up."""
    rng = np.random.default_rng(7)
    truth, trials = 0.15, 200
    covered_slope = covered_curve = bounded = 0
    for index in range(trials):
        sweeps, scales = synthetic_study(rng, truth, noise=0.004, seed_offset=0.05, tilt=0.04)
        samples, noise = bootstrap_sweeps(sweeps, replicates=400, seed=index)
        assert noise.tilt_degrees == 3  # one per sweep of two seeds
        low, high = percentile_interval(slope_samples(samples, scales))
        covered_slope += low <= truth <= high
        bounded += math.isfinite(high - low)
        optimum = math.log(0.05) + truth * math.log(scales[1] / 32)
        low, high = percentile_interval(samples[1].log_lr)
        covered_curve += low <= optimum <= high
    assert covered_slope >= 0.90 * trials
    assert covered_curve >= 0.90 * trials
    assert bounded >= 0.80 * trials


def test_replicates_apply_the_point_estimates_rule_row_by_row():
    """Every replicate chooses its own window around its own best LR and accepts its optimum
    by the point estimate's rule: fit_lr_optima equals fit_lr_optimum row by row, on rows whose
    best LR moves, that diverge, and whose fit is unreliable or outside the LRs fitted."""
    rng = np.random.default_rng(11)
    lrs = 0.01 * 2 ** (np.arange(9) / 2)
    x = np.log(lrs)
    rows = []
    for _ in range(300):
        optimum = x[rng.integers(0, 9)] + rng.normal(0, 0.3)
        row = 4.0 + rng.uniform(0.02, 0.3) * (x - optimum) ** 2 + rng.normal(0, 0.01, 9)
        if rng.random() < 0.2:
            row[-rng.integers(1, 3) :] = math.inf
        rows.append(row)
    table = np.array(rows)
    log_lr, loss = fit_lr_optima(lrs, table, noise=0.01)
    usable = 0
    for row, got_lr, got_loss in zip(table, log_lr, loss):
        fit = fit_lr_optimum(lrs, row, noise=0.01, bootstrap=0)
        if fit.usable:
            usable += 1
            assert got_lr == pytest.approx(math.log(fit.lr), abs=1e-9)
            assert got_loss == pytest.approx(fit.loss, abs=1e-9)
        else:
            assert math.isnan(got_lr) and math.isnan(got_loss)
    assert 50 < usable < 290  # both kinds of row occur


def test_replicates_redo_the_window_and_drop_what_the_point_estimate_would():
    """An optimum near the top of the grid: a replicate whose minimum falls beyond the LRs it
    fitted is dropped (and counted), as the point estimate would be, instead of extrapolated."""
    rng = np.random.default_rng(3)
    lrs = 0.01 * 2 ** (np.arange(8) / 2)
    optimum = math.log(lrs[-2]) + 0.15
    x = np.log(np.repeat(lrs, 2))
    seeds = np.tile([0, 1], lrs.size)
    losses = 4.0 + 0.1 * (x - optimum) ** 2 + rng.normal(0, 0.01, x.size)
    [sample], _ = bootstrap_sweeps([Sweep.from_runs(np.exp(x), seeds, losses)], replicates=1000)
    assert sample.usable
    kept = sample.log_lr[np.isfinite(sample.log_lr)]
    assert kept.max() <= math.log(lrs[-1]) + 1e-12  # never beyond the LRs swept
    assert 0.01 < sample.dropped < 0.9
    assert sample.dropped == pytest.approx(np.mean(np.isnan(sample.log_lr)))


def test_bootstrap_interval_of_a_paired_difference_covers_the_truth():
    rng = np.random.default_rng(2)
    covered, repeats = 0, 300
    for index in range(repeats):
        means = rng.normal(4.0, 0.2, 6)
        offsets = rng.normal(0, 0.3, 3)  # large seed effects, shared by the cells they pair
        values = means[:, None] + offsets[None, :] + rng.normal(0, 0.02, (6, 3))
        table = CellTable(values, (0, 1, 2), np.zeros(6, dtype=int))
        sample = bootstrap_cells(table, replicates=600, seed=index)
        low, high = percentile_interval(sample.replicates[:, 1] - sample.replicates[:, 0])
        covered += low <= means[1] - means[0] <= high
    assert covered / repeats >= 0.90


def test_seed_offsets_cancel_in_paired_comparisons():
    rng = np.random.default_rng(3)
    offsets = np.array([0.5, -0.4, 0.2])
    values = np.array([[4.0], [4.1]]) + offsets[None, :] + rng.normal(0, 0.005, (2, 3))
    sample = bootstrap_cells(CellTable(values, (0, 1, 2), np.zeros(2, dtype=int)), seed=0)
    low, high = percentile_interval(sample.replicates[:, 1] - sample.replicates[:, 0])
    assert low < 0.1 < high and high - low < 0.1  # far narrower than the seed offsets


def test_without_a_degree_of_freedom_intervals_are_unbounded_not_zero():
    one_seed = CellTable(np.array([[4.0], [4.2]]), (0,), np.zeros(2, dtype=int))
    sample = bootstrap_cells(one_seed, replicates=50)
    assert not sample.noise.known
    assert percentile_interval(sample.replicates[:, 1] - sample.replicates[:, 0]) == (
        -math.inf,
        math.inf,
    )
    # Three LRs and one seed fit the parabola exactly: nothing is left to measure noise with.
    exact = Sweep.from_runs([0.01, 0.02, 0.04], [0, 0, 0], [4.2, 4.0, 4.1])
    samples, noise = bootstrap_sweeps([exact], replicates=50)
    assert samples[0].fit.usable and not noise.known
    assert np.isnan(samples[0].log_lr).all()


def test_sweep_table_marks_divergence_and_missing_runs():
    sweep = Sweep.from_runs(
        [0.01, 0.01, 0.02, 0.02, 0.04], [0, 1, 0, 1, 0], [4.1, 4.3, 4.0, math.inf, 4.2]
    )
    assert sweep.seeds == (0, 1)
    means = sweep.means
    assert means[0] == pytest.approx(4.2)
    assert math.isinf(means[1])  # one seed diverged: the LR is at the edge of stability
    assert means[2] == pytest.approx(4.2) and list(sweep.seed_counts) == [2, 1, 1]


def test_percentile_interval_needs_most_replicates_defined():
    values = np.concatenate([np.linspace(0, 1, 97), [math.nan] * 3])
    low, high = percentile_interval(values)
    assert 0 < low < 0.05 and 0.95 < high < 1
    assert percentile_interval(np.concatenate([values, [math.nan] * 5])) == (-math.inf, math.inf)
