"""Intervals for designed studies: a residual bootstrap that keeps the design (docs/method.md §6).

A study is a set of LR sweeps (``Sweep``: distinct LRs x seeds) or of cells measured once per
seed (``CellTable``: e.g. one method at one scale and one LR). Each run's loss is modelled as

    loss[point, seed] = fitted[point] + offset[seed] + tilt[seed] * ln(lr) + deviation

where ``fitted`` is the quadratic in ln(lr) around a sweep's optimum (or a cell's mean),
``offset`` the seed's shift, shared by every run with that seed in a block (the same data order
and initialization), so it cancels when runs of one block are compared, and ``tilt`` the seed's
slope in ln(lr) (sweeps only): a seed that favours larger LRs moves the optimum, which a
constant offset cannot. A replicate draws every deviation, with replacement, from the
deviations of all the study's runs (pooled, rescaled for the parameters fitted and widened by
the t/normal quantile ratio of their degrees of freedom), draws a new tilt for every seed of
every sweep from the tilts' own spread (seed level: its variance is measured between the seeds
of each sweep, less the part the deviations already carry, and widened for its degrees of
freedom), adds them back, and redoes every fit downstream, each sweep's choice of window and
best LR and the acceptance of its optimum included. Replicates keep the LRs, the seeds and the
pairing of the real runs; the 95% percentile interval of any statistic computed from them is
its interval, and the share of replicates without a usable optimum is reported. A study too
small to estimate its noise (no residual degree of freedom) has undefined replicates, and so
unbounded intervals; a study with one seed per sweep cannot measure tilts and says so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from hyperp.analysis.fits import (
    DEFAULT_WINDOW,
    LROptimum,
    fit_lr_optima,
    fit_lr_optimum,
    t_widening,
)

__all__ = [
    "CellSample",
    "CellTable",
    "Noise",
    "Sweep",
    "SweepSample",
    "bootstrap_cells",
    "bootstrap_sweeps",
]


@dataclass(frozen=True)
class Noise:
    """The per-run noise a study's residuals imply: ``sigma`` with ``degrees`` of freedom; for
    sweeps also the spread of the seeds' tilts in ln(lr) (loss per unit of ln lr) with its
    degrees of freedom (0: one seed per sweep, not measured)."""

    sigma: float
    degrees: int
    tilt_sigma: float = math.nan
    tilt_degrees: int = 0

    @property
    def known(self) -> bool:
        return self.degrees >= 1 and math.isfinite(self.sigma)


@dataclass(frozen=True)
class Sweep:
    """One LR curve: ``losses[i, j]`` is the run at ``lrs[i]`` with ``seeds[j]`` (NaN: no run,
    +inf: diverged)."""

    lrs: np.ndarray
    seeds: tuple[int, ...]
    losses: np.ndarray

    @classmethod
    def from_runs(
        cls, lrs: Sequence[float], seeds: Sequence[int], losses: Sequence[float]
    ) -> Sweep:
        """Arrange runs ``(lr, seed, loss)``; a repeated (lr, seed) keeps the last run."""
        grid = np.unique(np.asarray(lrs, dtype=float))
        seed_list = tuple(sorted({int(s) for s in seeds}))
        table = np.full((grid.size, len(seed_list)), math.nan)
        for lr, seed, loss in zip(lrs, seeds, losses):
            row = int(np.searchsorted(grid, float(lr)))
            table[row, seed_list.index(int(seed))] = float(loss)
        return cls(grid, seed_list, table)

    @property
    def means(self) -> np.ndarray:
        """Mean loss per LR over its seeds: +inf where any seed diverged (that LR is at the edge
        of stability), NaN where there is no run."""
        out = np.full(self.lrs.size, math.nan)
        for row, values in enumerate(self.losses):
            observed = values[~np.isnan(values)]
            if observed.size:
                out[row] = math.inf if np.isinf(observed).any() else observed.mean()
        return out

    @property
    def seed_counts(self) -> np.ndarray:
        return np.sum(np.isfinite(self.losses), axis=1)


@dataclass
class SweepSample:
    """A sweep's optimum (fitted to the per-LR means) and its bootstrap replicates."""

    sweep: Sweep
    fit: LROptimum | None
    error: str | None = None
    log_lr: np.ndarray = field(default_factory=lambda: np.array([]), repr=False)
    loss: np.ndarray = field(default_factory=lambda: np.array([]), repr=False)

    @property
    def usable(self) -> bool:
        return self.fit is not None and self.fit.usable

    @property
    def dropped(self) -> float:
        """The share of replicates without a usable optimum (NaN without replicates)."""
        return float(np.mean(~np.isfinite(self.log_lr))) if self.log_lr.size else math.nan


@dataclass
class CellTable:
    """Cells measured once per seed: ``values[c, j]`` for ``seeds[j]`` (NaN: missing). Seeds
    pair runs within a block (``blocks[c]``); their offsets are estimated per block."""

    values: np.ndarray
    seeds: tuple[int, ...]
    blocks: np.ndarray

    @classmethod
    def from_runs(
        cls,
        cells: Sequence[object],
        seeds: Sequence[int],
        values: Sequence[float],
        block_of: dict[object, object] | None = None,
    ) -> tuple[CellTable, list[object]]:
        """Arrange runs ``(cell, seed, value)``; returns the table and the cell order."""
        order: list[object] = []
        for cell in cells:
            if cell not in order:
                order.append(cell)
        seed_list = tuple(sorted({int(s) for s in seeds}))
        table = np.full((len(order), len(seed_list)), math.nan)
        for cell, seed, value in zip(cells, seeds, values):
            table[order.index(cell), seed_list.index(int(seed))] = float(value)
        names = [block_of.get(cell, 0) if block_of else 0 for cell in order]
        labels = {name: index for index, name in enumerate(dict.fromkeys(names))}
        return cls(table, seed_list, np.array([labels[n] for n in names])), order


@dataclass
class CellSample:
    """Cell means (``estimate``) and their bootstrap replicates (``replicates``: R x cells)."""

    estimate: np.ndarray
    replicates: np.ndarray
    noise: Noise


def _seed_offsets(residual: np.ndarray, blocks: np.ndarray) -> np.ndarray:
    """Per-block seed offsets (blocks x seeds) from a cells x seeds residual, mean zero."""
    offsets = np.zeros((int(blocks.max()) + 1, residual.shape[1]))
    for block in range(offsets.shape[0]):
        rows = residual[blocks == block]
        with np.errstate(invalid="ignore"):
            column = np.nanmean(np.where(np.isfinite(rows), rows, np.nan), axis=0)
        column = np.where(np.isfinite(column), column, 0.0)
        present = np.isfinite(rows).any(axis=0)
        if present.any():
            column[present] -= column[present].mean()
        offsets[block] = column
    return offsets


def _pool(deviations: list[np.ndarray], degrees: int) -> tuple[np.ndarray, Noise]:
    """All deviations, rescaled so their mean square estimates the noise variance and widened
    for the degrees of freedom; empty when there is no degree of freedom."""
    values = np.concatenate([d[np.isfinite(d)] for d in deviations]) if deviations else np.array([])
    if degrees < 1 or values.size == 0:
        return np.array([]), Noise(math.nan, max(degrees, 0))
    sigma = float(np.sqrt(np.sum(values**2) / degrees))
    pool = values * math.sqrt(values.size / degrees) * t_widening(degrees)
    return pool, Noise(sigma, degrees)


@dataclass
class _Parts:
    """One sweep split as the module docstring models it (``x``: ln lr minus the window's mean,
    over the whole grid)."""

    base: np.ndarray  # the parabola in the window, the mean loss outside it (inf: diverged)
    x: np.ndarray
    offsets: np.ndarray
    observed: np.ndarray  # runs present at each LR and seed (finite)
    noise: float  # the noise of a mean the point estimate was judged against


def _seed_lines(
    residual: np.ndarray, x: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per seed (columns of ``residual``, NaN: no run) an offset and a tilt in ``x``, both with
    mean zero over the seeds that have one. Returns (offsets, tilts, has tilt, sum of squares of
    x about each seed's own mean)."""
    seeds = residual.shape[1]
    offsets, tilts, sxx = np.zeros(seeds), np.zeros(seeds), np.full(seeds, math.nan)
    has_offset, has_tilt = np.zeros(seeds, bool), np.zeros(seeds, bool)
    for j in range(seeds):
        present = np.isfinite(residual[:, j])
        if not present.any():
            continue
        has_offset[j] = True
        xj, rj = x[present], residual[present, j]
        centred = xj - xj.mean()
        offsets[j] = rj.mean()
        if np.unique(xj).size >= 2:
            has_tilt[j] = True
            sxx[j] = float(centred @ centred)
            tilts[j] = float(centred @ rj) / sxx[j]
            offsets[j] -= tilts[j] * xj.mean()
    for values, present in ((offsets, has_offset), (tilts, has_tilt)):
        if present.any():
            values[present] -= values[present].mean()
    return offsets, tilts, has_tilt, sxx


def _tilt_spread(tilts: list[np.ndarray], sxx: list[np.ndarray], sigma: float) -> tuple[float, int]:
    """The standard deviation of a seed's tilt between seeds and its degrees of freedom: the
    spread of the measured tilts (mean zero within each sweep) less what the run noise alone
    puts into a measured tilt (sigma^2 / Sxx)."""
    degrees = sum(max(t.size - 1, 0) for t in tilts)
    if degrees < 1 or not math.isfinite(sigma):
        return math.nan, degrees
    total = sum(float(t @ t) for t in tilts) / degrees
    from_noise = sigma**2 * float(np.mean(1 / np.concatenate(sxx)))
    return math.sqrt(max(total - from_noise, 0.0)), degrees


def _split(sweep: Sweep, fit: LROptimum) -> tuple[_Parts, np.ndarray, np.ndarray, np.ndarray]:
    """A sweep's runs split into the model's parts; also its deviations, its measured tilts and
    their Sxx (window only)."""
    rows = np.isin(sweep.lrs, fit.lrs)
    log_lr = np.log(sweep.lrs)
    x = log_lr - float(log_lr[rows].mean())
    observed = np.isfinite(sweep.losses)
    residual = np.where(
        observed[rows], sweep.losses[rows] - fit.curve(sweep.lrs[rows])[:, None], np.nan
    )
    offsets, tilts, has_tilt, sxx = _seed_lines(residual, x[rows])
    deviation = residual - offsets[None, :] - tilts[None, :] * x[rows, None]
    base = sweep.means.copy()
    base[rows] = fit.curve(sweep.lrs[rows])
    parts = _Parts(base, x, offsets, observed, math.nan)
    return parts, deviation, tilts[has_tilt], sxx[has_tilt]


def _degrees(deviation: np.ndarray, tilts: np.ndarray) -> int:
    """Residual degrees of freedom of one window: its runs less the parabola (3), the seed
    offsets and the seed tilts (each one fewer than its seeds: their means are the parabola's)."""
    present = np.isfinite(deviation)
    seeds = int(present.any(axis=0).sum())
    return int(present.sum()) - 3 - max(seeds - 1, 0) - max(tilts.size - 1, 0)


def _replicate_means(
    parts: _Parts, sweep: Sweep, pool: np.ndarray, tilt: float, rng: np.random.Generator, count: int
) -> np.ndarray:
    """``count`` replicates of the sweep's mean loss per LR (the module docstring's model)."""
    observed = parts.observed
    draws = rng.choice(pool, size=(count, *observed.shape))
    tilts = rng.normal(0.0, tilt, size=(count, 1, observed.shape[1])) if tilt > 0 else 0.0
    runs = parts.base[None, :, None] + parts.offsets[None, None, :] + draws
    runs = runs + tilts * parts.x[None, :, None]
    counts = observed.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(observed[None], runs, 0.0).sum(axis=2) / counts[None, :]
    fixed = ~np.isfinite(parts.base) | (counts == 0)  # diverged or never run: as observed
    return np.where(fixed[None, :], sweep.means[None, :], means)


def bootstrap_sweeps(
    sweeps: Sequence[Sweep],
    *,
    replicates: int = 2000,
    seed: int = 0,
    window: int | None = DEFAULT_WINDOW,
) -> tuple[list[SweepSample], Noise]:
    """Each sweep's optimum with ``replicates`` bootstrap replicates of its (ln lr*, loss*).

    The optimum is fitted to the per-LR mean losses (``window`` distinct LRs either side of the
    best, see :func:`hyperp.analysis.fit_lr_optimum`) and judged against the noise of a mean.
    The deviations and seed tilts of every run are pooled over the sweeps given (they share
    one noise level), as in the module docstring. A replicate chooses its own window and best
    LR and keeps its optimum only where the point estimate's rule would
    (:func:`hyperp.analysis.fits.fit_lr_optima`); elsewhere it is NaN, and
    ``SweepSample.dropped`` is that share.
    """
    samples: list[SweepSample] = []
    parts: list[_Parts | None] = []
    deviations: list[np.ndarray] = []
    tilts: list[np.ndarray] = []
    sxx: list[np.ndarray] = []
    degrees = 0
    for sweep in sweeps:
        try:
            first = fit_lr_optimum(sweep.lrs, sweep.means, window=window, bootstrap=0)
        except ValueError as error:
            samples.append(SweepSample(sweep, None, str(error)))
            parts.append(None)
            continue
        split, deviation, measured, spread = _split(sweep, first)
        degrees += _degrees(deviation, measured)
        deviations.append(deviation)
        if measured.size:
            tilts.append(measured)
            sxx.append(spread)
        parts.append(split)
        samples.append(SweepSample(sweep, first))
    pool, noise = _pool(deviations, degrees)
    tilt_sigma, tilt_degrees = _tilt_spread(tilts, sxx, noise.sigma)
    noise = Noise(noise.sigma, noise.degrees, tilt_sigma, tilt_degrees)
    tilt_draw = tilt_sigma * t_widening(tilt_degrees) if tilt_degrees >= 1 else 0.0
    rng = np.random.default_rng(seed)
    for sample, split in zip(samples, parts):
        if sample.fit is None or split is None:
            continue
        window_counts = split.observed[np.isin(sample.sweep.lrs, sample.fit.lrs)].sum(axis=1)
        split.noise = noise.sigma / math.sqrt(float(max(window_counts.min(), 1)))
        if noise.known:
            sample.fit = fit_lr_optimum(
                sample.sweep.lrs,
                sample.sweep.means,
                window=window,
                noise=split.noise,
                bootstrap=0,
            )
        if pool.size == 0:
            sample.log_lr = np.full(replicates, math.nan)
            sample.loss = np.full(replicates, math.nan)
            continue
        means = _replicate_means(split, sample.sweep, pool, tilt_draw, rng, replicates)
        sample.log_lr, sample.loss = fit_lr_optima(
            sample.sweep.lrs, means, window=window, noise=split.noise
        )
    return samples, noise


def bootstrap_cells(
    table: CellTable, *, replicates: int = 2000, seed: int = 0, iterations: int = 20
) -> CellSample:
    """Cell means with replicates: values = cell mean + block seed offset + pooled deviation.

    With one seed, or too few runs to estimate the noise, the replicates are NaN."""
    values = np.asarray(table.values, dtype=float)
    observed = np.isfinite(values)
    blocks = np.asarray(table.blocks, dtype=int)
    offsets = np.zeros((int(blocks.max()) + 1 if blocks.size else 1, values.shape[1]))
    with np.errstate(invalid="ignore"):
        means = np.nanmean(np.where(observed, values, np.nan), axis=1)
        for _ in range(iterations):  # alternate cell means and seed offsets (missing runs)
            shifted = values - offsets[blocks]
            means = np.nanmean(np.where(observed, shifted, np.nan), axis=1)
            offsets = _seed_offsets(np.where(observed, values - means[:, None], np.nan), blocks)
    deviation = np.where(observed, values - means[:, None] - offsets[blocks], np.nan)
    seeds_per_block = sum(
        int(observed[blocks == b].any(axis=0).sum()) for b in range(offsets.shape[0])
    )
    cells = int(observed.any(axis=1).sum())
    degrees = int(observed.sum()) - cells - (seeds_per_block - offsets.shape[0])
    pool, noise = _pool([deviation], degrees)
    if pool.size == 0:
        return CellSample(means, np.full((replicates, values.shape[0]), math.nan), noise)
    rng = np.random.default_rng(seed)
    draws = rng.choice(pool, size=(replicates, *values.shape))
    runs = means[None, :, None] + offsets[blocks][None] + draws
    counts = np.maximum(observed.sum(axis=1), 1)
    replicate_means = np.where(observed[None], runs, 0.0).sum(axis=2) / counts[None, :]
    replicate_means[:, ~observed.any(axis=1)] = math.nan
    estimate = np.where(observed, values, 0.0).sum(axis=1) / counts
    estimate[~observed.any(axis=1)] = math.nan
    return CellSample(estimate, replicate_means, noise)
