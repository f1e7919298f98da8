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
    percentile_interval,
)

HALF_OCTAVE = math.log(2) / 2


def synthetic_study(rng, exponent, *, seeds=2, noise=0.02, seed_offset=0.05, scales=(32, 64, 128)):
    """LR curves at each scale whose optimum is 0.05 (scale / 32)^exponent: 7 half-octave LRs
    (the grid placed around the optimum as a sweep file would be, not centred on it), every LR
    at every seed; a seed shifts a whole curve."""
    sweeps = []
    for scale in scales:
        optimum = math.log(0.05) + exponent * math.log(scale / 32)
        start = round((optimum + rng.normal(0, 0.3)) / HALF_OCTAVE - 3) * HALF_OCTAVE
        grid = start + HALF_OCTAVE * np.arange(7)
        offsets = rng.normal(0, seed_offset, seeds)
        losses = 4.0 + 0.2 * (grid[:, None] - optimum) ** 2 + offsets[None, :]
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
        assert noise.known and noise.degrees >= 12
        low, high = percentile_interval(slope_samples(samples, scales))
        covered += low <= truth <= high
    assert covered / repeats >= 0.90


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
