"""Running the studies: sweep files split into LR curves, adaptive phases, derived settings.

Every arm's sweep file (``studies/<size>/<stem>.toml``) is split into curves, one per
combination of its axes other than the LR and the seed; each curve is its own sweep directory
``OUT/<stem>/<curve>/``, run through :func:`hyperp.sweep.run_sweep` (resumable: a finished run is
never redone). The phases of a curve:

1. the sweep file's LR grid, at every seed;
2. ``extend``: while its best point (mean over seeds) has fewer than two LRs with a finite
   loss on a side, more LRs on that side, at the grid's spacing beyond the edge, or halfway to
   the first diverged LR (``phases.json`` records each decided round, so an interrupted
   command resumes the same rounds instead of deciding new ones).

Settings derived from other studies go into the curve's name, so a changed input never mixes
with runs made under an old one: the Muon baseline's decay tuned at the base scale, its logit
multiplier ``d0/d``, a compute arm's bracket around its transferred base LR, and the number of
evaluation batches that makes every run see the same validation tokens.
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from hyperp.analysis.bootstrap import Sweep
from hyperp.analysis.fits import fit_lr_optimum
from hyperp.analysis.io import load_records, record_value
from hyperp.fileio import atomic_write_text
from hyperp.reproduce.catalogue import BASE, Arm, Study, matches
from hyperp.rules import muon_logit_multiplier
from hyperp.sweep import SweepSpec, load_sweep, run_name, run_sweep

__all__ = [
    "SIZES",
    "Curve",
    "Runner",
    "SizeSettings",
    "default_studies_dir",
    "extension_points",
]

SEED_KEY = "train.seed"


@dataclass(frozen=True)
class SizeSettings:
    """What differs between sizes besides the sweep files."""

    replicates: int  # bootstrap replicates behind every interval
    extend_rounds: int  # at most this many extension rounds per curve
    side_points: int  # finite LRs wanted on each side of a curve's best point
    eval_tokens: int | None  # validation tokens of every run (None: as the sweep files say)
    description: str


SIZES: dict[str, SizeSettings] = {
    "smoke": SizeSettings(200, 1, 1, None, "a few seconds per run: checks the pipeline (CI)"),
    "quick": SizeSettings(2000, 3, 2, 102_400, "2 CPU cores, at most 90 minutes"),
    "full": SizeSettings(2000, 3, 2, 1_048_576, "one GPU, about an hour on an H100"),
}


def default_studies_dir() -> Path:
    """``./studies`` when it exists (a checkout), else the one beside the source tree."""
    here = Path.cwd() / "studies"
    if here.is_dir():
        return here
    return Path(__file__).resolve().parents[3] / "studies"


@dataclass
class Curve:
    """One curve of an arm: the sweep file's other axes fixed (``values``) plus the derived
    settings; ``lrs`` the LR grid before extension (empty for an arm without an LR axis)."""

    arm: Arm
    values: dict[str, Any]
    derived: dict[str, Any]
    directory: Path
    spec: SweepSpec
    lr_key: str | None
    lrs: list[float]
    seeds: list[int]
    missing: str | None = None  # why the curve cannot run (a derived setting is unavailable)

    @property
    def variant(self) -> str:
        key = self.arm.variant_key
        return self.arm.variant(self.values.get(key)) if key else self.arm.label

    def value(self, key: str) -> Any:
        return {**self.spec.settings, **self.values, **self.derived}.get(key)


@dataclass
class RunTable:
    """A curve's runs: the LR x seed table plus every finished run's summary record."""

    sweep: Sweep | None
    records: list[dict[str, Any]] = field(default_factory=list)
    failed: int = 0  # runs that failed other than by diverging (left out)
    diverged: int = 0


def extension_points(
    lrs: np.ndarray, means: np.ndarray, ratio: float, side_points: int
) -> list[float]:
    """LRs to add so the best mean has ``side_points`` finite LRs on each side (see module)."""
    order = np.argsort(lrs)
    lrs, means = np.asarray(lrs, dtype=float)[order], np.asarray(means, dtype=float)[order]
    present = ~np.isnan(means)  # NaN: no run there (a failure other than divergence)
    lrs, means = lrs[present], means[present]
    if lrs.size == 0:
        return []
    finite = np.isfinite(means)
    if not finite.any():  # everything diverged: go lower
        return [_round(lrs[0] / ratio**step) for step in range(1, side_points + 1)]
    best = int(np.argmin(np.where(finite, means, np.inf)))
    extra: list[float] = []
    for direction in (-1, 1):
        count, last, blocker = 0, lrs[best], None
        index = best + direction
        while 0 <= index < lrs.size:
            if not finite[index]:
                blocker = lrs[index]
                break
            count, last = count + 1, lrs[index]
            index += direction
        if count >= side_points:
            continue
        if blocker is not None:
            extra.append(_round(math.sqrt(last * blocker)))
        else:
            edge = lrs[0] if direction < 0 else lrs[-1]
            factor = ratio if direction > 0 else 1 / ratio
            extra += [_round(edge * factor**step) for step in range(1, side_points - count + 1)]
    return sorted(set(extra) - {_round(v) for v in lrs})


PHASES = "phases.json"  # a curve's decided extension rounds, so a resumed curve repeats them


def _extension_rounds(curve: Curve) -> list[list[float]]:
    path = curve.directory / PHASES
    return json.loads(path.read_text()).get("rounds", []) if path.is_file() else []


def _round(value: float) -> float:
    return float(f"{value:.6g}")


def _grid_ratio(values: list[float]) -> float:
    ordered = sorted(values)
    ratios = [b / a for a, b in itertools.pairwise(ordered) if a > 0]
    return statistics.median(ratios) if ratios else math.sqrt(2)


class Runner:
    """Builds every curve of the selected studies and runs (or only locates) their phases.

    ``train=False`` runs nothing: derived settings come from the runs already there, and a
    curve whose inputs are missing is marked with the reason instead.
    """

    def __init__(
        self,
        *,
        size: str,
        studies_dir: Path,
        out: Path,
        settings: dict[str, Any],
        workers: int,
        threads_per_worker: int,
        train: bool,
        log: Callable[[str], None],
    ) -> None:
        self.size = SIZES[size]
        self.size_name = size
        self.studies_dir = studies_dir
        self.out = out
        self.settings = settings
        self.workers = workers
        self.threads = threads_per_worker
        self.train = train
        self.log = log
        self._done: set[Path] = set()
        self._vocab: dict[tuple, int] = {}
        self.lr_sources: dict[str, str] = {}  # compute arm -> where its base LR came from
        self._decay: tuple[float | None, str] | None = None

    # -- sweep files ------------------------------------------------------------------------

    def arm_spec(self, stem: str) -> SweepSpec:
        path = self.studies_dir / self.size_name / f"{stem}.toml"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} does not exist; give the studies directory with --studies (a checkout's "
                "studies/ holds smoke/, quick/ and full/)"
            )
        spec = load_sweep(path, out=self.out / stem)
        clash = set(self.settings) & set(spec.axes)
        if clash:
            raise ValueError(
                f"--set {', '.join(sorted(clash))} is an axis of {path.name}; it cannot be fixed"
            )
        spec.settings = {**spec.settings, **self.settings}
        return spec

    def arm_of(self, stem: str) -> tuple[Study, Arm]:
        from hyperp.reproduce.studies import STUDIES  # the studies' measures use the runner

        for item in STUDIES:
            for arm in item.arms:
                if arm.stem == stem:
                    return item, arm
        raise ValueError(f"no study has an arm {stem!r}")

    def curves(self, arm: Arm, lr_key: str, where: dict[str, Any] | None = None) -> list[Curve]:
        """The arm's curves (those matching ``where``), with derived settings resolved."""
        lr_key = arm.lr_key or lr_key
        spec = self.arm_spec(arm.stem)
        has_lr = lr_key in spec.axes or arm.lr_source is not None
        keys = [k for k in spec.axes if k not in (lr_key, SEED_KEY)]
        seeds = [int(s) for s in spec.axes.get(SEED_KEY, [spec.settings.get(SEED_KEY, 0)])]
        combos: list[dict[str, Any]] = [{}]
        for key in keys:
            combos = [{**c, key: v} for c in combos for v in spec.axes[key]]
        out = []
        for values in combos:
            if where and any(values.get(k, spec.settings.get(k)) != v for k, v in where.items()):
                continue
            if arm.skips(values):
                continue
            source = next(
                (item for item in arm.shared if matches(values, self._at_base(item.pattern))),
                None,
            )
            if source is not None:
                out.append(self._shared(arm, values, source, lr_key))
                continue
            curve = self._curve(arm, spec, lr_key if has_lr else None, values, seeds)
            out.append(curve)
        return out

    def _shared(self, arm: Arm, values: dict[str, Any], source, lr_key: str) -> Curve:
        """Another arm's curve under this arm's name and values (see ``Arm.shared``)."""
        _, source_arm = self.arm_of(source.stem)
        found = self.curves(source_arm, lr_key, dict(self._at_base(source.where)))
        if len(found) != 1:
            raise ValueError(f"{arm.stem}: {source.stem} has no single curve at {source.where}")
        return replace(found[0], arm=arm, values=values)

    def _at_base(self, pattern: tuple[tuple[str, Any], ...]) -> tuple[tuple[str, Any], ...]:
        """A pattern with ``BASE`` values replaced by the base model's (its base.toml)."""
        from hyperp.train.config import load_config

        if not any(value == BASE for _, value in pattern):
            return pattern
        base = load_config(self.studies_dir / self.size_name / "base.toml")
        out = []
        for key, value in pattern:
            if value == BASE:
                section, name = key.split(".", 1)
                value = getattr(getattr(base, section), name)
            out.append((key, value))
        return tuple(out)

    def _curve(
        self,
        arm: Arm,
        spec: SweepSpec,
        lr_key: str | None,
        values: dict[str, Any],
        seeds: list[int],
    ) -> Curve:
        derived: dict[str, Any] = {}
        missing = None
        config = self._config(spec, values)
        if "muon_decay" in arm.derived:
            decay, why = self.tuned_decay()
            if decay is None:
                missing = why
            else:
                derived["optim.weight_decay"] = decay
        if "muon_logit_multiplier" in arm.derived:
            base_depth = config.optim.base_depth or config.model.depth
            multiplier = muon_logit_multiplier(base_depth, config.model.depth)
            derived["model.logit_multiplier"] = _round(multiplier)
        if self.size.eval_tokens:
            rows = config.train.batch_size * config.train.seq_len
            derived["train.eval_batches"] = max(1, math.ceil(self.size.eval_tokens / rows))
        lrs = [float(v) for v in spec.axes.get(lr_key, [])] if lr_key else []
        if arm.lr_source is not None and lr_key:
            base_lr, why = self.base_lr(arm, config)
            if base_lr is None:
                missing = missing or why
                lrs = []
            else:
                lrs = [_round(base_lr * math.sqrt(2) ** step) for step in arm.bracket]
        name = run_name({**values, **{k: v for k, v in derived.items() if k in _NAMED}})
        directory = self.out / arm.stem / (name if name != "run" else "all")
        axes: dict[str, list[Any]] = {}
        if lr_key:
            axes[lr_key] = lrs
        axes[SEED_KEY] = seeds
        settings = {**spec.settings, **values, **derived}
        settings.pop(SEED_KEY, None)
        curve_spec = replace(spec, path=None, out=directory, settings=settings, axes=axes)
        return Curve(arm, values, derived, directory, curve_spec, lr_key, lrs, seeds, missing)

    def _config(self, spec: SweepSpec, values: dict[str, Any]):
        """The resolved config of a curve's runs (the data's vocabulary filled in, as the
        trainer does), for plans, batch sizes and depths."""
        from hyperp.data import data_vocab_size
        from hyperp.train.config import load_config

        overrides = {**spec.settings, **values}
        overrides.pop(SEED_KEY, None)
        config = load_config(spec.base, overrides)
        data = config.data
        key = (data.path, data.vocab_size, data.max_bytes, config.model.vocab_size)
        if key not in self._vocab:
            self._vocab[key] = data_vocab_size(config)
        return config.resolve(self._vocab[key])

    # -- derived settings -------------------------------------------------------------------

    def tuned_decay(self) -> tuple[float | None, str]:
        """The Muon baseline's decay: the weight-decay study's value with the lowest optimal
        loss (fitted optimum, else the best observed loss), and how it was chosen."""
        if self._decay is not None:
            return self._decay
        item, arm = self.arm_of("wd_muon")
        best: tuple[float, float] | None = None
        for curve in self.curves(arm, item.lr_key):
            self.run_curve(curve)
            table = self.table(curve)
            if table.sweep is None:
                continue
            try:
                fit = fit_lr_optimum(table.sweep.lrs, table.sweep.means, bootstrap=0)
            except ValueError:
                continue
            loss = fit.loss if fit.usable else fit.best_loss
            decay = float(curve.values.get("optim.weight_decay", 0.0))
            if best is None or loss < best[1]:
                best = (decay, loss)
        if best is None:
            self._decay = (None, "the weight-decay study has no Muon curve to tune the decay on")
        else:
            self._decay = (best[0], "lowest optimal loss of the weight-decay study's Muon curves")
        return self._decay

    def base_lr(self, arm: Arm, config) -> tuple[float | None, str]:
        """A compute arm's base LR: the optimum of its source curve at the base width."""
        source = arm.lr_source
        assert source is not None
        item, source_arm = self.arm_of(source.stem)
        base_width = config.optim.base_width or config.model.width
        where = {**dict(source.where), "model.width": base_width}
        curves = self.curves(source_arm, item.lr_key, where)
        if not curves:
            return None, f"{source.stem} has no curve at width {base_width}"
        curve = curves[0]
        self.run_curve(curve)
        table = self.table(curve)
        if table.sweep is None:
            return None, f"{source.stem} at width {base_width} has no finished runs"
        try:
            fit = fit_lr_optimum(table.sweep.lrs, table.sweep.means, bootstrap=0)
        except ValueError as error:
            return None, f"{source.stem} at width {base_width}: {error}"
        where = f"{source.stem}/{curve.directory.name}"
        if fit.usable:
            self.lr_sources[arm.stem] = f"{fit.lr:.4g}, the fitted optimum of {where}"
            return fit.lr, ""
        self.lr_sources[arm.stem] = (
            f"{fit.best_lr:.4g}, the best observed LR of {where} (its fit is not usable)"
        )
        return fit.best_lr, ""

    # -- running ----------------------------------------------------------------------------

    def run_curve(self, curve: Curve) -> None:
        """Run (or resume) a curve's phases; nothing when not training or already done."""
        if not self.train or curve.directory in self._done or curve.missing:
            return
        rounds = _extension_rounds(curve)
        lrs = sorted({*curve.lrs, *(v for r in rounds for v in r)})
        self._sweep(curve, lrs, "grid" if not rounds else f"grid + {len(rounds)} extension(s)")
        extend = curve.lr_key is not None and curve.arm.lr_source is None
        ratio = _grid_ratio(curve.lrs)
        while extend and len(rounds) < self.size.extend_rounds:
            table = self.table(curve)
            if table.sweep is None:
                break
            extra = extension_points(
                table.sweep.lrs, table.sweep.means, ratio, self.size.side_points
            )
            if not extra:
                break
            rounds.append(extra)
            record = {"grid": curve.lrs, "rounds": rounds}
            atomic_write_text(curve.directory / PHASES, json.dumps(record))
            lrs = sorted({*lrs, *extra})
            self._sweep(
                curve, lrs, f"extension {len(rounds)}: {', '.join(f'{v:g}' for v in extra)}"
            )
        self._done.add(curve.directory)

    def _sweep(self, curve: Curve, lrs: list[float], what: str) -> None:
        axes = dict(curve.spec.axes)
        if curve.lr_key:
            axes[curve.lr_key] = lrs
        spec = replace(curve.spec, axes=axes)
        started = time.monotonic()
        result = run_sweep(spec, workers=self.workers, threads_per_worker=self.threads)
        if result.finished or result.failed:
            self.log(
                f"  {curve.arm.stem}/{curve.directory.name} ({what}): {len(result.finished)} "
                f"trained, {len(result.skipped)} already done, {len(result.failed)} failed, "
                f"{time.monotonic() - started:.0f}s"
            )
        if result.interrupted:
            raise KeyboardInterrupt

    def run_study(self, item: Study) -> None:
        for arm in item.arms:
            for curve in self.curves(arm, item.lr_key):
                if curve.missing:
                    self.log(f"  {arm.stem}/{curve.directory.name}: skipped ({curve.missing})")
                self.run_curve(curve)

    # -- reading ----------------------------------------------------------------------------

    def table(self, curve: Curve) -> RunTable:
        """The curve's runs at its current LRs and seeds (a diverged run counts as +inf)."""
        if not curve.directory.is_dir():
            return RunTable(None)
        try:
            loaded = load_records([curve.directory])
        except FileNotFoundError:
            return RunTable(None)
        allowed = set(self._current_lrs(curve)) if curve.lr_key else None
        lrs, seeds, losses, records = [], [], [], []
        failed = diverged = 0
        for record in loaded.records:
            lr = record_value(record, curve.lr_key) if curve.lr_key else 0.0
            seed = record_value(record, SEED_KEY)
            if allowed is not None and _round(float(lr)) not in allowed:
                continue
            if int(seed) not in curve.seeds:
                continue
            loss = record.get("val_loss")
            lrs.append(float(lr))
            seeds.append(int(seed))
            losses.append(float(loss) if isinstance(loss, int | float) else math.nan)
            records.append(record)
        for item in loaded.failed:
            if item.config is None or not item.diverged:
                # Still running or interrupted (no error.txt) is not a failure.
                failed += not item.error.startswith("no summary.json")
                continue
            lr = record_value(item.config, curve.lr_key) if curve.lr_key else 0.0
            if allowed is not None and _round(float(lr)) not in allowed:
                continue
            lrs.append(float(lr))
            seeds.append(int(record_value(item.config, SEED_KEY) or 0))
            losses.append(math.inf)
            diverged += 1
        if not lrs:
            return RunTable(None, records, failed, diverged)
        return RunTable(Sweep.from_runs(lrs, seeds, losses), records, failed, diverged)

    def _current_lrs(self, curve: Curve) -> list[float]:
        rounds = _extension_rounds(curve)
        return [_round(v) for v in {*curve.lrs, *(v for r in rounds for v in r)}]

    # -- planning ---------------------------------------------------------------------------

    def plan(self, names: list[str]) -> list[dict[str, Any]]:
        """Per study: runs of the grid phase, the largest run's tokens, and the grid's FLOPs
        (extensions add runs; LRs do not change tokens or FLOPs)."""
        from hyperp.reproduce.studies import study

        rows = []
        for name in names:
            item = study(name)
            runs = max_tokens = 0
            flops = 0.0
            for arm in item.arms:
                spec = self.arm_spec(arm.stem)
                lr_key = arm.lr_key or item.lr_key
                keys = [k for k in spec.axes if k not in (lr_key, SEED_KEY)]
                combos: list[dict[str, Any]] = [{}]
                for key in keys:
                    combos = [{**c, key: v} for c in combos for v in spec.axes[key]]
                lr_points = len(spec.axes.get(lr_key, [])) or max(len(arm.bracket), 1)
                seeds = len(spec.axes.get(SEED_KEY, [0]))
                for values in combos:
                    shared = any(matches(values, self._at_base(c.pattern)) for c in arm.shared)
                    if arm.skips(values) or shared:  # trained once, under another arm
                        continue
                    plan = self._config(spec, values).plan()
                    count = lr_points * seeds
                    runs += count
                    flops += count * plan.flops
                    max_tokens = max(max_tokens, plan.tokens)
            rows.append({"study": name, "runs": runs, "max_tokens": max_tokens, "flops": flops})
        return rows


# Derived settings that change what a run trains, so they name the curve's directory.
_NAMED = ("optim.weight_decay", "model.logit_multiplier")
