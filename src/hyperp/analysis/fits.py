"""The fits of docs/method.md §6: LR optima, power laws, loss against compute, leverage.

Plain arrays in, small result objects out; numpy and scipy only (no torch), so a sweep can be
re-analysed on any machine from its files.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import stats
from scipy.optimize import OptimizeWarning, curve_fit, least_squares

__all__ = [
    "DEFAULT_WINDOW",
    "ComputeCurve",
    "FewPointsWarning",
    "LROptimum",
    "OffsetPowerLawFit",
    "PowerLawFit",
    "SensitivityResult",
    "fit_loss_vs_compute",
    "fit_lr_optimum",
    "fit_offset_power_law",
    "fit_power_law",
    "interpolated_leverage",
    "leverage",
    "percentile_interval",
    "sweep_sensitivity",
    "t_widening",
    "vertices",
]

ArrayLike = Sequence[float] | np.ndarray

# More k-subsets than this are sampled (without replacement, seeded) rather than enumerated.
MAX_SENSITIVITY_SUBSETS = 20000


def _as_float_array(values: ArrayLike, name: str) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=float).reshape(-1)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be numbers, got {values!r}") from error
    return array


def _paired(x: ArrayLike, y: ArrayLike, x_name: str, y_name: str) -> tuple[np.ndarray, np.ndarray]:
    x_array = _as_float_array(x, x_name)
    y_array = _as_float_array(y, y_name)
    if x_array.shape != y_array.shape:
        raise ValueError(
            f"{x_name} and {y_name} must have the same length, got {x_array.size} and {y_array.size}"
        )
    return x_array, y_array


# --------------------------------------------------------------------------------------------
# LR optimum of one sweep (docs/method.md §6): loss = a (ln lr)^2 + b ln lr + c
# --------------------------------------------------------------------------------------------

# Distinct LRs fitted on each side of the best one. Far from the optimum the loss is not a
# parabola in ln(lr) (it rises steeply toward divergence), so those points bias the vertex.
DEFAULT_WINDOW = 2
# A bootstrap interval with more resamples than this share without a minimum is unbounded.
MAX_UNDEFINED_SHARE = 0.05


class FewPointsWarning(UserWarning):
    """A fit with as many points as parameters: it passes through them and measures nothing."""


def t_widening(degrees_of_freedom: float, level: float = 0.95) -> float:
    """How much wider a t interval with this many degrees of freedom is than a normal one.

    Residuals resampled from a small fit understate the noise they estimate; the bootstrap
    widens them by this ratio, as a t interval would (docs/method.md §6 intervals, DESIGN analysis)."""
    if degrees_of_freedom < 1:
        return math.nan
    tail = 0.5 + level / 2
    return float(stats.t.ppf(tail, degrees_of_freedom) / stats.norm.ppf(tail))


@dataclass(frozen=True)
class LROptimum:
    """The result of ``fit_lr_optimum``.

    The parabola is fitted to a window of ``2 * window + 1`` distinct LRs centred on the best
    observed one (``lrs``/``losses``/``residuals`` are those points). ``lr`` and ``loss`` are the
    fitted optimum only when ``inside`` is true; otherwise they are NaN and ``reason`` says why, so
    an extrapolated vertex is never used by accident (``vertex_lr``/``vertex_loss`` keep it; NaN
    when ``a <= 0``). ``reliable`` is false, with ``unreliable`` saying why, when the vertex lies
    further below every observed loss than the grid and the noise allow, or the parabola explains
    its window poorly: such an optimum is reported but must not enter power laws or drifts
    (``usable`` combines both checks).
    """

    lr: float
    loss: float
    inside: bool
    reason: str | None
    lr_interval: tuple[float, float]
    loss_interval: tuple[float, float]
    vertex_lr: float
    vertex_loss: float
    best_lr: float
    best_loss: float
    coefficients: tuple[float, float, float]  # (a, b, c) of a (ln lr)^2 + b ln lr + c
    lrs: np.ndarray = field(repr=False)
    losses: np.ndarray = field(repr=False)
    residuals: np.ndarray = field(repr=False)
    rms_residual: float = math.nan
    n_points: int = 0  # points with a finite loss
    dropped: int = 0  # points left out because their loss (or LR) was not finite
    bootstrap: int = 0
    bootstrap_failures: int = 0  # resamples without a minimum (a <= 0)
    n_fit: int = 0  # points inside the window, the ones fitted
    excluded: int = 0  # finite points outside the window
    reliable: bool = True
    unreliable: str | None = None
    noise: float = math.nan  # the noise the reliability check allowed for

    @property
    def usable(self) -> bool:
        """An optimum inside the window whose fit passed the reliability checks."""
        return self.inside and self.reliable

    @property
    def lr_range(self) -> tuple[float, float]:
        """The LRs fitted (the window)."""
        return float(self.lrs.min()), float(self.lrs.max())

    def curve(self, lrs: ArrayLike) -> np.ndarray:
        """The fitted parabola evaluated at ``lrs``."""
        a, b, c = self.coefficients
        log_lr = np.log(_as_float_array(lrs, "lrs"))
        return a * log_lr**2 + b * log_lr + c

    def to_dict(self) -> dict:
        return {
            "lr": self.lr,
            "loss": self.loss,
            "inside": self.inside,
            "reason": self.reason,
            "reliable": self.reliable,
            "unreliable": self.unreliable,
            "lr_interval": list(self.lr_interval),
            "loss_interval": list(self.loss_interval),
            "vertex_lr": self.vertex_lr,
            "vertex_loss": self.vertex_loss,
            "best_lr": self.best_lr,
            "best_loss": self.best_loss,
            "coefficients": list(self.coefficients),
            "lr_range": list(self.lr_range),
            "residuals": self.residuals.tolist(),
            "rms_residual": self.rms_residual,
            "n_points": self.n_points,
            "n_fit": self.n_fit,
            "excluded": self.excluded,
            "dropped": self.dropped,
            "noise": self.noise,
            "bootstrap": self.bootstrap,
            "bootstrap_failures": self.bootstrap_failures,
        }


def _clean_sweep(lrs: ArrayLike, losses: ArrayLike) -> tuple[np.ndarray, np.ndarray, int]:
    lr_array, loss_array = _paired(lrs, losses, "lrs", "losses")
    if np.any(np.isfinite(lr_array) & (lr_array <= 0)):
        raise ValueError("learning rates must be positive (the fit is in ln lr)")
    keep = np.isfinite(lr_array) & np.isfinite(loss_array)
    dropped = int((~keep).sum())
    lr_array, loss_array = lr_array[keep], loss_array[keep]
    distinct = np.unique(lr_array).size
    if distinct < 3:
        detail = f" ({dropped} point(s) had a NaN/inf loss and were left out)" if dropped else ""
        raise ValueError(
            f"an LR optimum needs at least 3 distinct learning rates with finite losses, got "
            f"{distinct}{detail}; add sweep points around the expected optimum"
        )
    return lr_array, loss_array, dropped


def _window(lrs: ArrayLike, losses: ArrayLike, window: int | None) -> np.ndarray:
    """Which points to fit: those at the ``window`` distinct LRs either side of the best mean.

    Positions count every swept LR, diverged ones too, so a window never reaches past a
    divergence to a finite but meaningless loss beyond it. It widens until it holds 3 distinct
    LRs with finite losses (the parabola's parameters)."""
    lr_array, loss_array = _paired(lrs, losses, "lrs", "losses")
    grid = np.unique(lr_array[np.isfinite(lr_array)])
    finite = np.isfinite(loss_array) & np.isfinite(lr_array)
    means = np.full(grid.size, math.inf)
    for index, lr in enumerate(grid):
        values = loss_array[finite & (lr_array == lr)]
        if values.size:
            means[index] = values.mean()
    if window is None:
        return finite
    best = int(np.argmin(means))
    width = window
    while True:
        chosen = grid[max(best - width, 0) : best + width + 1]
        chosen = chosen[np.isfinite(means[np.isin(grid, chosen)])]
        if chosen.size >= 3 or width >= grid.size:
            return finite & np.isin(lr_array, chosen)
        width += 1


def _quadratic_batch(log_lr: np.ndarray, losses: np.ndarray) -> np.ndarray:
    """Least-squares (a, b, c) for every row of ``losses`` (replicates x points), one design."""
    design = np.stack([log_lr**2, log_lr, np.ones_like(log_lr)], axis=1)
    return losses @ np.linalg.pinv(design).T


def _weighted_quadratic(log_lr: np.ndarray, losses: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Least-squares (a, b, c) for each row of ``weights`` (subset indicators), batched.

    Rows whose normal equations are singular (fewer than 3 distinct points drawn) give NaN.
    """
    design = np.stack([log_lr**2, log_lr, np.ones_like(log_lr)], axis=1)  # (n, 3)
    gram = np.einsum("rn,ni,nj->rij", weights, design, design)
    rhs = np.einsum("rn,ni,n->ri", weights, design, losses)
    distinct_drawn = (weights[:, None, :] > 0) & (
        log_lr[None, None, :] == np.unique(log_lr)[None, :, None]
    )
    enough = distinct_drawn.any(axis=2).sum(axis=1) >= 3
    coefficients = np.full((weights.shape[0], 3), np.nan)
    if enough.any():
        coefficients[enough] = np.linalg.solve(gram[enough], rhs[enough][..., None])[..., 0]
    return coefficients


def vertices(coefficients: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ln lr*, loss*) of each row (a, b, c); NaN where the parabola has no minimum (a <= 0)."""
    a, b, c = np.asarray(coefficients, dtype=float).T
    with np.errstate(divide="ignore", invalid="ignore"):
        log_lr = np.where(a > 0, -b / (2 * a), math.nan)
        loss = np.where(a > 0, c - b**2 / (4 * a), math.nan)
    return log_lr, loss


def percentile_interval(
    samples: ArrayLike, level: float = 0.95, max_undefined: float = MAX_UNDEFINED_SHARE
) -> tuple[float, float]:
    """The ``level`` percentile interval of bootstrap samples (NaN: undefined replicates).

    When more than ``max_undefined`` of the replicates are undefined the statistic has no
    interval at this resolution: (-inf, inf), which no threshold region contains."""
    values = _as_float_array(samples, "samples")
    if values.size == 0:
        return (math.nan, math.nan)
    undefined = ~np.isfinite(values)
    if undefined.mean() > max_undefined:
        return (-math.inf, math.inf)
    tail = 50 * (1 - level)
    low, high = np.percentile(values[~undefined], [tail, 100 - tail])
    return float(low), float(high)


def _local_checks(
    a: np.ndarray,
    vertex_loss: np.ndarray,
    log_grid: np.ndarray,
    means: np.ndarray,
    curve: np.ndarray,
    best: int,
    noise: float,
    noise_given: bool,
) -> tuple[np.ndarray, ...]:
    """The two reliability checks of :func:`_reliability` for many fits of one window at once:
    ``means``/``curve`` are rows (one per fit) of the mean and fitted loss at the window's
    distinct LRs ``log_grid``, ``best`` the column of the best mean. Returns (too low, gap,
    allowed, misses, miss, rise) where "too low" and "misses" are the failed checks."""
    neighbours = [i for i in (best - 1, best + 1) if 0 <= i < log_grid.size]
    half_step = max(abs(log_grid[i] - log_grid[best]) for i in neighbours) / 2
    curvature = np.asarray(a, dtype=float)
    if len(neighbours) == 2:  # the local curvature, which a far point cannot inflate
        x, y = log_grid[best - 1 : best + 2], means[:, best - 1 : best + 2]
        slopes = (y[:, 1:] - y[:, :-1]) / (x[1:] - x[:-1])
        curvature = (slopes[:, 1] - slopes[:, 0]) / (x[2] - x[0])
    # The vertex may lie half a grid step from the best point, so up to a·h² below it, plus noise.
    allowed = np.maximum(curvature, 0.0) * half_step**2 + 2 * noise
    gap = means[:, best] - vertex_loss
    too_low = gap > allowed + 1e-12
    rise = np.max(means[:, neighbours] - means[:, [best]], axis=1)
    miss = np.abs(means[:, best] - curve[:, best])
    misses = ~too_low & (miss > np.maximum(rise, 2 * noise if noise_given else 0.0) + 1e-12)
    return too_low, gap, allowed, misses, miss, rise


def _reliability(
    a: float,
    vertex_loss: float,
    lr_fit: np.ndarray,
    loss_fit: np.ndarray,
    fitted: np.ndarray,
    noise: float,
    noise_given: bool,
) -> str | None:
    """Why the fitted optimum is not to be trusted, or None (see :class:`LROptimum`).

    Both checks look at the best point and its neighbours, where the optimum is decided. The
    second allows only a known ``noise`` (not the fit's own residuals, which a point far out
    inflates), so a parabola bent by far points cannot excuse itself."""
    grid = np.unique(lr_fit)
    means = np.array([[loss_fit[lr_fit == lr].mean() for lr in grid]])
    curve = np.array([[fitted[lr_fit == lr].mean() for lr in grid]])
    best = int(np.argmin(means[0]))
    too_low, gap, allowed, misses, miss, rise = _local_checks(
        np.array([a]), np.array([vertex_loss]), np.log(grid), means, curve, best, noise, noise_given
    )
    if too_low[0]:
        return (
            f"the fitted minimum ({vertex_loss:.4g}) lies {gap[0]:.3g} below every observed "
            f"loss, more than the grid spacing and the noise allow ({allowed[0]:.3g}); refine "
            f"the grid near lr {grid[best]:.3g}"
        )
    if misses[0]:
        return (
            f"the parabola misses the best point by {miss[0]:.3g}, more than the loss changes "
            f"beside it ({rise[0]:.3g}): points further out bend it; refine the grid near lr "
            f"{grid[best]:.3g}"
        )
    return None


def fit_lr_optima(
    lrs: ArrayLike, means: ArrayLike, *, window: int | None = DEFAULT_WINDOW, noise: float
) -> tuple[np.ndarray, np.ndarray]:
    """(ln lr*, loss*) of many sweeps on one grid of distinct ``lrs``, one row of mean losses
    each (inf: diverged, NaN: no run), with :func:`fit_lr_optimum`'s rules applied row by row:
    its window around the row's own best LR, its fit, and its acceptance (a minimum inside the
    LRs fitted that passes the reliability checks against ``noise``). NaN where
    :func:`fit_lr_optimum` would give no usable optimum. Rows sharing a window are fitted
    together, so bootstrap replicates cost one least-squares solve per window."""
    grid = _as_float_array(lrs, "lrs")
    table = np.atleast_2d(np.asarray(means, dtype=float))
    log_lr = np.full(table.shape[0], math.nan)
    loss = np.full(table.shape[0], math.nan)
    finite = np.isfinite(table)
    enough = finite.sum(axis=1) >= 3
    best = np.argmin(np.where(finite, table, np.inf), axis=1)
    keys = np.concatenate([best[:, None], finite], axis=1)
    for key in np.unique(keys[enough], axis=0):
        rows = np.flatnonzero(enough & np.all(keys == key, axis=1))
        chosen = _window(grid, table[rows[0]], window)
        x = np.log(grid[chosen])
        centre = float(x.mean())
        y = table[np.ix_(rows, np.flatnonzero(chosen))]
        a, b, c = _quadratic_batch(x - centre, y).T
        span = float(x.max() - x.min())
        flat = np.abs(a) * span**2 <= 1e-9 * (np.abs(y).max(axis=1) + 1.0)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            vertex = np.where(a > 0, -b / (2 * a), math.nan)
            vertex_loss = c - b**2 / (4 * a)
        inside = (a > 0) & ~flat & (vertex + centre >= x.min()) & (vertex + centre <= x.max())
        curve = a[:, None] * (x - centre) ** 2 + b[:, None] * (x - centre) + c[:, None]
        local = int(np.argmin(y[0]))
        too_low, _, _, misses, _, _ = _local_checks(a, vertex_loss, x, y, curve, local, noise, True)
        accepted = inside & ~too_low & ~misses
        log_lr[rows] = np.where(accepted, vertex + centre, math.nan)
        loss[rows] = np.where(accepted, vertex_loss, math.nan)
    return log_lr, loss


def fit_lr_optimum(
    lrs: ArrayLike,
    losses: ArrayLike,
    *,
    window: int | None = DEFAULT_WINDOW,
    noise: float | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
) -> LROptimum:
    """Fit ``loss = a (ln lr)^2 + b ln lr + c`` near the best point of one sweep (docs/method.md §6).

    Only the points at the ``window`` distinct LRs on each side of the best observed one enter
    the fit (``window=None``: every point); diverged points (NaN or infinite loss) never do and
    are counted in ``dropped``. The optimum is ``lr* = exp(-b / 2a)`` with ``loss*`` the fitted
    minimum, reported (``inside=True``) only when ``a > 0`` and ``lr*`` lies among the LRs
    fitted; otherwise ``lr``/``loss`` are NaN, ``reason`` explains, and the best observed point is
    still given. ``reliable``/``unreliable`` judge the fit (see :class:`LROptimum`) against
    ``noise``, the standard deviation of one point's loss (default: the fit's own residuals).

    The intervals are 95% percentile intervals of a residual bootstrap: the fit's residuals,
    rescaled for the 3 parameters fitted and widened by the t/normal quantile ratio (or normal
    noise of size ``noise`` when given), are resampled onto the fitted curve and the window is
    refitted; widened if needed to contain the estimate. NaN without an optimum or without a
    residual degree of freedom; unbounded when more than 5% of the resamples have no minimum.
    """
    lr_all, loss_all = _paired(lrs, losses, "lrs", "losses")
    lr_array, _, dropped = _clean_sweep(lr_all, loss_all)
    in_window = _window(lr_all, loss_all, window)
    grid = np.unique(lr_all[np.isfinite(lr_all)])
    lr_fit, loss_fit = lr_all[in_window], loss_all[in_window]
    # Centre ln(lr) so the normal equations stay well conditioned for any LR scale.
    log_centre = float(np.mean(np.log(lr_fit)))
    log_lr = np.log(lr_fit) - log_centre
    a, b_centred, c_centred = np.polyfit(log_lr, loss_fit, 2)
    fitted = a * log_lr**2 + b_centred * log_lr + c_centred
    residuals = loss_fit - fitted
    # Back to coefficients in uncentred ln(lr): a(x - m)^2 + b'(x - m) + c'.
    b_full = b_centred - 2 * a * log_centre
    c_full = a * log_centre**2 - b_centred * log_centre + c_centred
    means = {lr: float(loss_fit[lr_fit == lr].mean()) for lr in np.unique(lr_fit)}
    best_lr = min(means, key=means.get)
    best_loss = means[best_lr]
    lo, hi = float(lr_fit.min()), float(lr_fit.max())
    degrees = lr_fit.size - 3
    noise_given = noise is not None
    if noise is None:
        noise = float(np.sqrt(np.sum(residuals**2) / degrees)) if degrees > 0 else 0.0

    # Curvature that moves the fitted loss by less than this over the window is no curvature:
    # the losses are linear in ln(lr) and the vertex would be an artefact of rounding.
    span = float(log_lr.max() - log_lr.min())
    flat = abs(a) * span**2 <= 1e-9 * (float(np.abs(loss_fit).max()) + 1.0)
    vertex_lr = vertex_loss = math.nan
    if a > 0 and not flat:
        vertex_log = -b_centred / (2 * a)
        with np.errstate(over="ignore"):  # a nearly flat fit puts its vertex far out
            vertex_lr = float(np.exp(vertex_log + log_centre))
        vertex_loss = float(c_centred - b_centred**2 / (4 * a))

    edge_low, edge_high = lo <= float(grid.min()), hi >= float(grid.max())
    inside, reason = False, None
    if flat:
        direction = "larger" if b_centred < 0 else "smaller"
        reason = (
            "the loss is linear in ln(lr) over the sweep (no curvature), so the optimum lies "
            f"beyond it; it is not extrapolated; add {direction} learning rates"
        )
    elif a <= 0:
        reason = (
            "the fitted parabola opens downward (a <= 0), so the sweep has no minimum; "
            "the best observed point is reported instead; widen the sweep around it"
        )
    elif vertex_lr < lo:
        reason = (
            f"the fitted minimum ({vertex_lr:.3g}) lies below the smallest swept LR ({lo:.3g}); "
            "it is not extrapolated; add smaller learning rates"
            if edge_low
            else f"the fitted minimum ({vertex_lr:.3g}) lies below the LRs fitted around the best "
            f"point ({lo:.3g}); the sweep is irregular there"
        )
    elif vertex_lr > hi:
        reason = (
            f"the fitted minimum ({vertex_lr:.3g}) lies above the largest swept LR ({hi:.3g}); "
            "it is not extrapolated; add larger learning rates"
            if edge_high
            else f"the fitted minimum ({vertex_lr:.3g}) lies above the LRs fitted around the best "
            f"point ({hi:.3g}); the sweep is irregular there"
        )
    else:
        inside = True
    unreliable = None
    if inside:
        unreliable = _reliability(a, vertex_loss, lr_fit, loss_fit, fitted, noise, noise_given)

    lr_interval = loss_interval = (math.nan, math.nan)
    failures = 0
    # An interval is only meaningful around an optimum that exists, and needs a residual
    # degree of freedom to say how noisy the points are.
    if bootstrap > 0 and inside and (degrees > 0 if not noise_given else noise > 0):
        rng = np.random.default_rng(seed)
        if not noise_given:
            pool = residuals * math.sqrt(lr_fit.size / degrees) * t_widening(degrees)
            draws = rng.choice(pool, size=(bootstrap, lr_fit.size))
        else:
            draws = rng.normal(0.0, noise, size=(bootstrap, lr_fit.size))
        boot_log, boot_loss = vertices(_quadratic_batch(log_lr, fitted + draws))
        failures = int(np.sum(~np.isfinite(boot_log)))
        low, high = percentile_interval(boot_log + log_centre)
        loss_low, loss_high = percentile_interval(boot_loss)
        with np.errstate(over="ignore"):
            low, high = math.exp(low), math.exp(high)
        # A percentile interval of a skewed statistic can miss the estimate itself on a
        # small sweep; widen it to include the estimate rather than report an odd interval.
        lr_interval = (float(min(low, vertex_lr)), float(max(high, vertex_lr)))
        loss_interval = (float(min(loss_low, vertex_loss)), float(max(loss_high, vertex_loss)))

    return LROptimum(
        lr=vertex_lr if inside else math.nan,
        loss=vertex_loss if inside else math.nan,
        inside=inside,
        reason=reason,
        lr_interval=lr_interval,
        loss_interval=loss_interval,
        vertex_lr=vertex_lr,
        vertex_loss=vertex_loss,
        best_lr=float(best_lr),
        best_loss=float(best_loss),
        coefficients=(float(a), float(b_full), float(c_full)),
        lrs=lr_fit,
        losses=loss_fit,
        residuals=residuals,
        rms_residual=float(np.sqrt(np.mean(residuals**2))),
        n_points=int(lr_array.size),
        dropped=dropped,
        bootstrap=int(bootstrap),
        bootstrap_failures=failures,
        n_fit=int(lr_fit.size),
        excluded=int(lr_array.size - lr_fit.size),
        reliable=unreliable is None,
        unreliable=unreliable,
        noise=float(noise),
    )


# --------------------------------------------------------------------------------------------
# Sweep-point sensitivity (docs/method.md §6)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SensitivityResult:
    """Mean relative error of the optimum when only ``k`` of the ``n`` sweep points are used."""

    k: int
    n_points: int
    n_subsets: int  # subsets fitted (all of them, or a seeded sample when there are too many)
    n_valid: int  # subsets whose fit had a minimum (a > 0)
    lr_relative_error: float  # mean |lr*_k - lr*_all| / lr*_all over valid subsets
    loss_relative_error: float
    lr_relative_error_max: float
    loss_relative_error_max: float
    sampled: bool

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def sweep_sensitivity(
    lrs: ArrayLike,
    losses: ArrayLike,
    k: int,
    *,
    window: int | None = DEFAULT_WINDOW,
    seed: int = 0,
) -> SensitivityResult:
    """Fit every k-subset of the points an optimum is fitted to (``window``, as in
    :func:`fit_lr_optimum`) and compare its optimum with the fit to all of them (docs/method.md §6).

    Subsets whose parabola opens downward have no optimum; they are counted (``n_subsets -
    n_valid``) and left out of the means. The vertex is used even outside the subset's range,
    since the question is how far a k-point sweep would move the answer.
    """
    _clean_sweep(lrs, losses)
    lr_all, loss_all = _paired(lrs, losses, "lrs", "losses")
    chosen = _window(lr_all, loss_all, window)
    lr_array, loss_array = lr_all[chosen], loss_all[chosen]
    n = lr_array.size
    if not 3 <= k <= n:
        raise ValueError(f"k must be between 3 and the number of points fitted ({n}), got {k}")
    full = fit_lr_optimum(lr_array, loss_array, window=None, bootstrap=0)
    if not math.isfinite(full.vertex_lr):
        raise ValueError(
            "the all-point fit has no minimum (a <= 0), so there is nothing to compare subsets "
            "against; widen the sweep first"
        )
    total = math.comb(n, k)
    sampled = total > MAX_SENSITIVITY_SUBSETS
    if sampled:
        rng = np.random.default_rng(seed)
        subsets = np.array(
            [np.sort(rng.choice(n, size=k, replace=False)) for _ in range(MAX_SENSITIVITY_SUBSETS)]
        )
    else:
        subsets = np.array(list(itertools.combinations(range(n), k)))
    weights = np.zeros((len(subsets), n))
    np.put_along_axis(weights, subsets, 1.0, axis=1)
    log_centre = float(np.mean(np.log(lr_array)))
    log_lr = np.log(lr_array) - log_centre
    coefficients = _weighted_quadratic(log_lr, loss_array, weights)
    valid = np.isfinite(coefficients).all(axis=1) & (coefficients[:, 0] > 0)
    lr_errors = loss_errors = np.array([math.nan])
    if valid.any():
        a, b, c = coefficients[valid].T
        with np.errstate(over="ignore"):  # a nearly flat subset puts its vertex far out
            sub_lr = np.exp(-b / (2 * a) + log_centre)
        sub_loss = c - b**2 / (4 * a)
        lr_errors = np.abs(sub_lr - full.vertex_lr) / full.vertex_lr
        loss_errors = np.abs(sub_loss - full.vertex_loss) / abs(full.vertex_loss)
    return SensitivityResult(
        k=k,
        n_points=n,
        n_subsets=len(subsets),
        n_valid=int(valid.sum()),
        lr_relative_error=float(np.mean(lr_errors)),
        loss_relative_error=float(np.mean(loss_errors)),
        lr_relative_error_max=float(np.max(lr_errors)),
        loss_relative_error_max=float(np.max(loss_errors)),
        sampled=sampled,
    )


# --------------------------------------------------------------------------------------------
# Power law of the optimum against a scale axis (docs/method.md §6): y = a x^b
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PowerLawFit:
    """``y = coefficient * x ** exponent`` fitted two ways (docs/method.md §6).

    ``coefficient``/``exponent`` come from nonlinear least squares in linear space (the paper's
    procedure); ``loglog_*`` from least squares on ``ln y = ln a + b ln x``. Leave-one-out
    relative errors (each point predicted from a fit to the others) need at least 3 points.
    """

    coefficient: float
    exponent: float
    exponent_stderr: float
    loglog_coefficient: float
    loglog_exponent: float
    x: np.ndarray = field(repr=False)
    y: np.ndarray = field(repr=False)
    loo_relative_errors: np.ndarray = field(repr=False)
    loglog_loo_relative_errors: np.ndarray = field(repr=False)

    def predict(self, x: ArrayLike | float) -> np.ndarray | float:
        values = self.coefficient * np.asarray(x, dtype=float) ** self.exponent
        return float(values) if np.ndim(values) == 0 else values

    def predict_loglog(self, x: ArrayLike | float) -> np.ndarray | float:
        values = self.loglog_coefficient * np.asarray(x, dtype=float) ** self.loglog_exponent
        return float(values) if np.ndim(values) == 0 else values

    @property
    def loo_mean_relative_error(self) -> float:
        errors = self.loo_relative_errors
        return float(np.mean(np.abs(errors))) if errors.size else math.nan

    @property
    def loglog_loo_mean_relative_error(self) -> float:
        errors = self.loglog_loo_relative_errors
        return float(np.mean(np.abs(errors))) if errors.size else math.nan

    def to_dict(self) -> dict:
        return {
            "coefficient": self.coefficient,
            "exponent": self.exponent,
            "exponent_stderr": self.exponent_stderr,
            "loglog_coefficient": self.loglog_coefficient,
            "loglog_exponent": self.loglog_exponent,
            "x": self.x.tolist(),
            "y": self.y.tolist(),
            "loo_relative_errors": self.loo_relative_errors.tolist(),
            "loglog_loo_relative_errors": self.loglog_loo_relative_errors.tolist(),
            "loo_mean_relative_error": self.loo_mean_relative_error,
            "loglog_loo_mean_relative_error": self.loglog_loo_mean_relative_error,
        }


def _power_law_both(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float, float, float]:
    """(coefficient, exponent, exponent stderr, loglog coefficient, loglog exponent)."""
    loglog_exponent, loglog_log_coefficient = np.polyfit(np.log(x), np.log(y), 1)
    # Fit against x / x_ref (geometric mean) so the coefficient is O(y) and well conditioned.
    x_ref = float(np.exp(np.mean(np.log(x))))
    start = (float(np.exp(loglog_log_coefficient) * x_ref**loglog_exponent), loglog_exponent)
    stderr = math.nan
    try:
        with warnings.catch_warnings():
            # Two points fit exactly and have no covariance; the stderr stays NaN then.
            warnings.simplefilter("ignore", OptimizeWarning)
            (scaled_coefficient, exponent), covariance = curve_fit(
                lambda xs, a, b: a * (xs / x_ref) ** b, x, y, p0=start, maxfev=20000
            )
        if x.size > 2 and np.all(np.isfinite(covariance)):
            stderr = float(np.sqrt(covariance[1, 1]))
    except RuntimeError:
        # No convergence: fall back to the log-log solution, which is always defined.
        scaled_coefficient, exponent = start
    coefficient = float(scaled_coefficient) * x_ref ** (-float(exponent))
    return (
        coefficient,
        float(exponent),
        stderr,
        float(np.exp(loglog_log_coefficient)),
        float(loglog_exponent),
    )


def fit_power_law(x: ArrayLike, y: ArrayLike) -> PowerLawFit:
    """Fit ``y = a x^b`` (e.g. the optimal LR against tokens, batch, depth or width).

    Needs at least two distinct positive ``x`` with positive finite ``y``; leave-one-out errors
    need three.
    """
    x_array, y_array = _paired(x, y, "x", "y")
    keep = np.isfinite(x_array) & np.isfinite(y_array)
    x_array, y_array = x_array[keep], y_array[keep]
    if np.any(x_array <= 0) or np.any(y_array <= 0):
        raise ValueError("a power law needs positive x and y values")
    if np.unique(x_array).size < 2:
        raise ValueError(
            f"a power law needs at least 2 distinct scales, got {np.unique(x_array).size}; "
            "sweep at more than one scale (tokens, batch, depth or width)"
        )
    if np.unique(x_array).size == 2:
        warnings.warn(
            "a power law through 2 scales fits them exactly: its exponent carries no check and no "
            "error; sweep at least 3 scales",
            FewPointsWarning,
            stacklevel=2,
        )
    coefficient, exponent, stderr, loglog_coefficient, loglog_exponent = _power_law_both(
        x_array, y_array
    )
    loo, loo_loglog = [], []
    if x_array.size >= 3:
        for left_out in range(x_array.size):
            rest = np.arange(x_array.size) != left_out
            if np.unique(x_array[rest]).size < 2:
                loo.append(math.nan)
                loo_loglog.append(math.nan)
                continue
            a, b, _, la, lb = _power_law_both(x_array[rest], y_array[rest])
            truth = y_array[left_out]
            loo.append((a * x_array[left_out] ** b - truth) / truth)
            loo_loglog.append((la * x_array[left_out] ** lb - truth) / truth)
    return PowerLawFit(
        coefficient=coefficient,
        exponent=exponent,
        exponent_stderr=stderr,
        loglog_coefficient=loglog_coefficient,
        loglog_exponent=loglog_exponent,
        x=x_array,
        y=y_array,
        loo_relative_errors=np.array(loo, dtype=float),
        loglog_loo_relative_errors=np.array(loo_loglog, dtype=float),
    )


@dataclass(frozen=True)
class OffsetPowerLawFit:
    """``y = coefficient * x ** exponent + offset`` with ``coefficient >= 0`` and
    ``0 <= offset <= min y`` (e.g. the optimal loss against sparsity, docs/method.md §6)."""

    coefficient: float
    exponent: float
    offset: float
    x: np.ndarray = field(repr=False)
    y: np.ndarray = field(repr=False)
    loo_relative_errors: np.ndarray = field(repr=False)

    def predict(self, x: ArrayLike | float) -> np.ndarray | float:
        values = self.coefficient * np.asarray(x, dtype=float) ** self.exponent + self.offset
        return float(values) if np.ndim(values) == 0 else values

    @property
    def loo_mean_relative_error(self) -> float:
        errors = self.loo_relative_errors
        return float(np.nanmean(np.abs(errors))) if np.isfinite(errors).any() else math.nan

    def to_dict(self) -> dict:
        return {
            "coefficient": self.coefficient,
            "exponent": self.exponent,
            "offset": self.offset,
            "x": self.x.tolist(),
            "y": self.y.tolist(),
            "loo_relative_errors": self.loo_relative_errors.tolist(),
            "loo_mean_relative_error": self.loo_mean_relative_error,
        }


def _offset_power_law(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    x_ref = float(np.exp(np.mean(np.log(x))))
    scaled = x / x_ref
    floor_max = float(y.min())

    def residual(params: np.ndarray) -> np.ndarray:
        amplitude, exponent, floor = params
        return amplitude * scaled**exponent + floor - y

    best = None
    # Several starting floors: the cost surface in the offset is often flat and multi-modal.
    for fraction in (0.0, 0.5, 0.9, 0.99):
        floor0 = fraction * floor_max
        excess = np.maximum(y - floor0, 1e-12 * max(abs(floor_max), 1.0))
        slope, intercept = np.polyfit(np.log(scaled), np.log(excess), 1)
        start = np.array([math.exp(intercept), slope, floor0])
        result = least_squares(
            residual, start, bounds=([0.0, -np.inf, 0.0], [np.inf, np.inf, max(floor_max, 0.0)])
        )
        cost = float(np.sum(result.fun**2))
        if best is None or cost < best[0]:
            best = (cost, result.x)
    assert best is not None
    amplitude, exponent, floor = (float(v) for v in best[1])
    return amplitude * x_ref ** (-exponent), exponent, floor


def fit_offset_power_law(x: ArrayLike, y: ArrayLike) -> OffsetPowerLawFit:
    """Fit ``y = A x^b + C`` by bounded least squares in linear space (needs 3 distinct ``x``;
    leave-one-out errors need 4)."""
    x_array, y_array = _paired(x, y, "x", "y")
    keep = np.isfinite(x_array) & np.isfinite(y_array)
    x_array, y_array = x_array[keep], y_array[keep]
    if np.any(x_array <= 0) or np.any(y_array <= 0):
        raise ValueError("a power law with offset needs positive x and y values")
    if np.unique(x_array).size < 3:
        raise ValueError(
            f"a power law with an offset has 3 parameters and needs at least 3 distinct scales, "
            f"got {np.unique(x_array).size}"
        )
    coefficient, exponent, offset = _offset_power_law(x_array, y_array)
    loo = []
    if x_array.size >= 4:
        for left_out in range(x_array.size):
            rest = np.arange(x_array.size) != left_out
            if np.unique(x_array[rest]).size < 3:
                loo.append(math.nan)
                continue
            a, b, c = _offset_power_law(x_array[rest], y_array[rest])
            truth = y_array[left_out]
            loo.append((a * x_array[left_out] ** b + c - truth) / truth)
    return OffsetPowerLawFit(
        coefficient=coefficient,
        exponent=exponent,
        offset=offset,
        x=x_array,
        y=y_array,
        loo_relative_errors=np.array(loo, dtype=float),
    )


# --------------------------------------------------------------------------------------------
# Loss against compute (docs/method.md §6): L(C) = A C^-b + E, and leverage
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ComputeCurve:
    """``L(C) = A * C**(-b) + E`` with ``A, b >= 0`` and ``0 <= E <= min L`` (``E = 0`` when
    ``offset`` is false: the pure power law)."""

    A: float
    b: float
    E: float
    offset: bool
    flops: np.ndarray = field(repr=False)
    losses: np.ndarray = field(repr=False)
    residuals: np.ndarray = field(repr=False)

    def __call__(self, flops: ArrayLike | float) -> np.ndarray | float:
        values = self.A * np.asarray(flops, dtype=float) ** (-self.b) + self.E
        return float(values) if np.ndim(values) == 0 else values

    def inverse(self, losses: ArrayLike | float) -> np.ndarray | float:
        """Compute that reaches ``losses``: ``((L - E) / A)^(-1/b)``; NaN where ``L <= E`` or the
        curve is flat (``b = 0`` or ``A = 0``), where no compute reaches that loss."""
        loss_array = np.asarray(losses, dtype=float)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            if self.b <= 0 or self.A <= 0:
                values = np.full(loss_array.shape, math.nan)
            else:
                excess = loss_array - self.E
                values = np.where(excess > 0, (excess / self.A) ** (-1.0 / self.b), math.nan)
        return float(values) if np.ndim(values) == 0 else values

    @property
    def rms_residual(self) -> float:
        return float(np.sqrt(np.mean(self.residuals**2)))

    def to_dict(self) -> dict:
        return {
            "A": self.A,
            "b": self.b,
            "E": self.E,
            "offset": self.offset,
            "flops": self.flops.tolist(),
            "losses": self.losses.tolist(),
            "residuals": self.residuals.tolist(),
            "rms_residual": self.rms_residual,
        }


def fit_loss_vs_compute(flops: ArrayLike, losses: ArrayLike, offset: bool = True) -> ComputeCurve:
    """Fit loss against training compute, in linear loss space with the bounds of docs/method.md §6.

    ``offset=True`` fits ``A C^-b + E`` (needs 3 points at 3 distinct compute values;
    more are advisable); ``offset=False`` the pure power law ``A C^-b`` (needs 2).
    Non-finite points are left out.
    """
    flop_array, loss_array = _paired(flops, losses, "flops", "losses")
    keep = np.isfinite(flop_array) & np.isfinite(loss_array)
    flop_array, loss_array = flop_array[keep], loss_array[keep]
    if np.any(flop_array <= 0) or np.any(loss_array <= 0):
        raise ValueError("loss against compute needs positive FLOPs and losses")
    needed = 3 if offset else 2
    distinct = np.unique(flop_array).size
    if distinct < needed:
        hint = "; use offset=False (the pure power law) for so few points" if offset else ""
        raise ValueError(
            f"fitting loss against compute {'with' if offset else 'without'} an offset needs at "
            f"least {needed} distinct compute values, got {distinct}{hint}"
        )
    if distinct == needed:
        warnings.warn(
            f"loss against compute {'with' if offset else 'without'} an offset through {distinct} "
            "compute values fits them exactly: the curve carries no check; add compute points",
            FewPointsWarning,
            stacklevel=2,
        )
    # Work with C / C_ref so the amplitude is O(loss): A = A_scaled * C_ref^b.
    c_ref = float(np.exp(np.mean(np.log(flop_array))))
    scaled = flop_array / c_ref
    min_loss = float(loss_array.min())

    def residual(params: np.ndarray) -> np.ndarray:
        amplitude, exponent, floor = params
        return amplitude * scaled ** (-exponent) + floor - loss_array

    best = None
    floor_starts = [0.0, 0.5, 0.9, 0.99] if offset else [0.0]
    for fraction in floor_starts:
        floor0 = fraction * min_loss
        excess = np.maximum(loss_array - floor0, 1e-12 * min_loss)
        slope, intercept = np.polyfit(np.log(scaled), np.log(excess), 1)
        start = np.array([math.exp(intercept), max(-slope, 1e-6), min(floor0, min_loss)])
        if offset:
            result = least_squares(
                residual, start, bounds=([0.0, 0.0, 0.0], [np.inf, np.inf, min_loss])
            )
            params = result.x
        else:
            # E is pinned at 0: fit (A, b) only.
            result = least_squares(
                lambda p: residual(np.array([p[0], p[1], 0.0])),
                start[:2],
                bounds=([0.0, 0.0], [np.inf, np.inf]),
            )
            params = np.array([result.x[0], result.x[1], 0.0])
        cost = float(np.sum(residual(params) ** 2))
        if best is None or cost < best[0]:
            best = (cost, params)
    assert best is not None
    amplitude_scaled, exponent, floor = (float(v) for v in best[1])
    amplitude = amplitude_scaled * c_ref**exponent
    fitted = amplitude_scaled * scaled ** (-exponent) + floor
    return ComputeCurve(
        A=amplitude,
        b=exponent,
        E=floor,
        offset=offset,
        flops=flop_array,
        losses=loss_array,
        residuals=loss_array - fitted,
    )


def leverage(curve: ComputeCurve, flops: ArrayLike, losses: ArrayLike) -> np.ndarray:
    """Compute leverage of ``curve``'s method over a baseline at each baseline point (docs/method.md §6).

    For each baseline point ``(C_y, L_y)`` the curve is inverted, ``C_x = curve.inverse(L_y)``,
    and the leverage is ``C_y / C_x``: how many times less compute the curve's method needs to
    reach the baseline's loss. NaN where ``L_y <= E`` (the curve never reaches that loss).
    """
    flop_array, loss_array = _paired(flops, losses, "flops", "losses")
    needed = np.asarray(curve.inverse(loss_array), dtype=float).reshape(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = flop_array / needed
    return np.where(np.isfinite(ratio) & (ratio > 0), ratio, math.nan)


def interpolated_leverage(
    flops: ArrayLike,
    losses: ArrayLike,
    baseline_flops: ArrayLike,
    baseline_losses: ArrayLike,
    *,
    extrapolate: float = 0.5,
) -> np.ndarray:
    """Compute leverage by local interpolation between measured points, no curve fit.

    The method's points ``(flops, losses)`` are joined piecewise linearly in (ln C, L). For each
    baseline point the compute at which that line reaches the baseline's loss is read off, and
    the leverage is ``C_baseline / C_method``. Beyond the method's measured losses the end
    segment is continued, at most ``extrapolate`` times its length in ln C; further out, or where
    the segment does not fall, the value is NaN.
    """
    flop_array, loss_array = _paired(flops, losses, "flops", "losses")
    base_flops, base_losses = _paired(baseline_flops, baseline_losses, "flops", "losses")
    keep = np.isfinite(flop_array) & np.isfinite(loss_array) & (flop_array > 0)
    order = np.argsort(flop_array[keep])
    log_c, level = np.log(flop_array[keep][order]), loss_array[keep][order]
    out = np.full(base_flops.shape, math.nan)
    if log_c.size < 2:
        return out
    for index, (target_flops, target) in enumerate(zip(base_flops, base_losses)):
        found = _crossing(log_c, level, target, extrapolate)
        if math.isfinite(found) and target_flops > 0:
            out[index] = target_flops / math.exp(found)
    return out


def _crossing(log_c: np.ndarray, level: np.ndarray, target: float, extrapolate: float) -> float:
    """ln C where the piecewise-linear (ln C, L) line first reaches ``target`` (NaN if never)."""
    if not math.isfinite(target):
        return math.nan
    for i in range(log_c.size - 1):
        low, high = sorted((level[i], level[i + 1]))
        if low <= target <= high and level[i] != level[i + 1]:
            share = (target - level[i]) / (level[i + 1] - level[i])
            return float(log_c[i] + share * (log_c[i + 1] - log_c[i]))
    # Outside the measured losses: continue the end segment the target lies beyond.
    first_slope = (level[1] - level[0]) / (log_c[1] - log_c[0])
    last_slope = (level[-1] - level[-2]) / (log_c[-1] - log_c[-2])
    if target > max(level) and first_slope < 0:
        step = (target - level[0]) / first_slope
        limit = -extrapolate * (log_c[1] - log_c[0])
        return float(log_c[0] + step) if step >= limit else math.nan
    if target < min(level) and last_slope < 0:
        step = (target - level[-1]) / last_slope
        limit = extrapolate * (log_c[-1] - log_c[-2])
        return float(log_c[-1] + step) if step <= limit else math.nan
    return math.nan
