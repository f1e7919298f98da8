"""Intervals for designed studies: a residual bootstrap that keeps the design (docs/method.md §6).

A study is a set of LR sweeps (``Sweep``: distinct LRs x seeds) or of cells measured once per
seed (``CellTable``: e.g. one method at one scale and one LR). Each run's loss is modelled as

    loss[point, seed] = fitted[point] + offset[seed] + deviation

where ``fitted`` is the quadratic in ln(lr) around a sweep's optimum (or a cell's mean) and
``offset`` is the seed's shift, shared by every run with that seed in a block (the same data
order and initialization), so it cancels when runs of one block are compared. A replicate draws
every deviation, with replacement, from the deviations of all the study's runs (pooled, rescaled
for the parameters fitted and widened by the t/normal quantile ratio of their degrees of
freedom), adds them back, and redoes every fit downstream. Replicates keep the LRs, the seeds and
the pairing of the real runs; the 95% percentile interval of any statistic computed from them
is its interval. A study too small to estimate its noise (no residual degree of freedom) has
undefined replicates, and so unbounded intervals.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from hyperp.analysis.fits import (
    DEFAULT_WINDOW,
    LROptimum,
    fit_lr_optimum,
    t_widening,
    vertices,
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
    """The per-run noise a study's residuals imply: ``sigma`` with ``degrees`` of freedom."""

    sigma: float
    degrees: int

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


def _window_rows(sweep: Sweep, fit: LROptimum) -> np.ndarray:
    return np.isin(sweep.lrs, fit.lrs)


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
    The deviations of every run from its sweep's parabola and seed offset are pooled over the
    sweeps given (they share one noise level), as in the module docstring. A replicate whose
    parabola opens downward has a NaN optimum.
    """
    samples: list[SweepSample] = []
    deviations: list[np.ndarray] = []
    degrees = 0
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    for sweep in sweeps:
        means = sweep.means
        try:
            first = fit_lr_optimum(sweep.lrs, means, window=window, bootstrap=0)
        except ValueError as error:
            samples.append(SweepSample(sweep, None, str(error)))
            parts.append((np.array([]),) * 4)
            continue
        rows = _window_rows(sweep, first)
        table = sweep.losses[rows]
        observed = np.isfinite(table)
        fitted = first.curve(sweep.lrs[rows])
        residual = np.where(observed, table - fitted[:, None], np.nan)
        offsets = _seed_offsets(residual, np.zeros(rows.sum(), dtype=int))[0]
        deviation = np.where(observed, residual - offsets[None, :], np.nan)
        seeds_present = int(observed.any(axis=0).sum())
        degrees += int(observed.sum()) - 3 - (seeds_present - 1)
        deviations.append(deviation)
        parts.append((sweep.lrs[rows], fitted, offsets, observed))
        samples.append(SweepSample(sweep, first))
    pool, noise = _pool(deviations, degrees)
    rng = np.random.default_rng(seed)
    for sample, (lrs, fitted, offsets, observed) in zip(samples, parts):
        if sample.fit is None:
            continue
        counts = np.maximum(observed.sum(axis=1), 1)
        if noise.known:
            sample.fit = fit_lr_optimum(
                sample.sweep.lrs,
                sample.sweep.means,
                window=window,
                noise=noise.sigma / math.sqrt(float(counts.min())),
                bootstrap=0,
            )
        if pool.size == 0:
            sample.log_lr = np.full(replicates, math.nan)
            sample.loss = np.full(replicates, math.nan)
            continue
        draws = rng.choice(pool, size=(replicates, *observed.shape))
        runs = fitted[None, :, None] + offsets[None, None, :] + draws
        means = np.where(observed[None], runs, 0.0).sum(axis=2) / counts[None, :]
        centre = float(np.mean(np.log(lrs)))
        design = np.log(lrs) - centre
        matrix = np.stack([design**2, design, np.ones_like(design)], axis=1)
        log_lr, loss = vertices(means @ np.linalg.pinv(matrix).T)
        sample.log_lr, sample.loss = log_lr + centre, loss
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
