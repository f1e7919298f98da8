"""Weight decay: MuonH's decay is a no-op by construction; Muon's must be tuned."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from hyperp.analysis.bootstrap import (
    CellTable,
    Noise,
    bootstrap_cells,
)
from hyperp.reproduce.catalogue import (
    Arm,
    Claim,
    Region,
    Study,
    threshold,
)
from hyperp.reproduce.runner import Curve, Runner
from hyperp.reproduce.studies.common import (
    StudyResult,
    claim_result,
    collect,
    curve_rows,
    has_runs,
    lr_figure,
    lr_samples,
    noise_table,
    number,
    regime,
    study_tables,
)

STUDY = Study(
    name="weight_decay",
    title="Weight decay",
    question="Does weight decay change MuonH's result (docs/method.md §1.2), and Muon's?",
    design=(
        "On the fixed-radius sphere, decay followed by the retraction is the same step "
        "scaled by 1/(1 - lr*decay): a no-op by construction, not by experiment. The MuonH "
        "arm therefore checks the code, not the claim. The claim's content is the contrast "
        "with Muon, whose independent decay shrinks the weights: its result depends on the "
        "decay, which must be tuned. LR curves at each decay value, at the base scale; "
        "Muon's best decay here is the decay every other Muon run uses."
    ),
    arms=(Arm("wd_hyperp", "MuonH (HyperP)"), Arm("wd_muon", "Muon")),
    scale_key="optim.weight_decay",
)

CLAIMS: tuple[Claim, ...] = (
    Claim(
        "decay_sphere",
        "2 (decay on the sphere: code check)",
        "Weight decay is a no-op for MuonH",
        "loss at the largest decay minus at no decay, MuonH, paired run by run (same LR and "
        "seed) over the LRs around the optimum",
        Region(-threshold("loss"), threshold("loss")),
        "a first-order no-op, so decay is dropped",
        "weight_decay",
        regime_sensitive=False,
    ),
    Claim(
        "decay_muon",
        "2 (decay matters for Muon)",
        "Unlike MuonH, Muon's result depends on its weight decay, which must be tuned",
        "optimal loss at no decay minus at Muon's best decay",
        Region(threshold("loss"), math.inf),
        "Muon is tuned with decay; HyperP drops it",
        "weight_decay",
    ),
)


def analyze(runner: Runner, figures: Path, seed: int) -> StudyResult:
    item = STUDY
    result = StudyResult(item.name)
    tables = study_tables(runner, item)
    collect(result, tables)
    noises: dict[str, Noise] = {}
    samples = lr_samples(runner, tables, seed, noises)
    inside = regime(result.records)["inside"]

    def decay_of(curve: Curve) -> float:
        return float(curve.value("optim.weight_decay") or 0.0)

    losses: dict[str, tuple[list[float], list[np.ndarray], list[float]]] = {}
    for variant, members in samples.items():
        ordered = sorted(members, key=lambda m: decay_of(m[0]))
        decays = [decay_of(c) for c, _ in ordered]
        points = [s.fit.loss if s.usable else math.nan for _, s in ordered]
        reps = [s.loss for _, s in ordered]
        losses[variant] = (decays, reps, points)
        lr_ratio = math.nan
        ratio_reps = np.array([])
        if len(ordered) >= 2 and ordered[0][1].usable and ordered[-1][1].usable:
            lr_ratio = ordered[-1][1].fit.lr / ordered[0][1].fit.lr
            ratio_reps = np.exp(ordered[-1][1].log_lr - ordered[0][1].log_lr)
        result.numbers.append(
            number(
                f"{variant}: optimal LR at decay {decays[-1]:g} over at decay {decays[0]:g}",
                lr_ratio,
                ratio_reps,
            )
        )

    result.claims.append(
        _decay_on_sphere(
            samples.get("MuonH (HyperP)", []), decay_of, inside, runner.size.replicates, seed
        )
    )
    muon = losses.get("Muon")
    if muon and len(muon[0]) >= 2 and muon[0][0] == 0:
        usable = [i for i in range(1, len(muon[0])) if math.isfinite(muon[2][i])]
        if usable and math.isfinite(muon[2][0]):
            best = min(usable, key=lambda i: muon[2][i])
            estimate = muon[2][0] - min(muon[2][0], muon[2][best])
            others = np.stack([muon[1][i] for i in [0, *usable]], axis=1)
            reps = muon[1][0] - np.min(others, axis=1)
            result.claims.append(claim_result("decay_muon", estimate, reps, inside))
        else:
            result.claims.append(
                claim_result("decay_muon", math.nan, np.array([]), inside, "no usable optimum")
            )
    else:
        result.claims.append(
            claim_result("decay_muon", math.nan, np.array([]), inside, "no Muon decay curves")
        )
    decay, how = runner.tuned_decay()
    if decay is not None:
        result.notes.append(f"Muon's decay for every other study: {decay:g} ({how}).")
    result.tables.append(curve_rows(samples, "weight decay", decay_of))
    result.tables.append(noise_table(noises))
    if has_runs(samples):
        paths = lr_figure(
            figures, "weight_decay", item.title, samples, "weight decay", decay_of, "LR"
        )
        result.figures.append({"path": paths["curves"], "caption": "loss against LR per decay"})
    return result


def _decay_on_sphere(members, decay_of, inside: bool, replicates: int, seed: int) -> dict:
    """MuonH's loss with the largest decay minus without, paired run by run (same LR, same
    seed) over the LRs fitted around the no-decay optimum: the runs differ only by the decay,
    so their difference is what the code check measures."""
    ordered = sorted(members, key=lambda m: decay_of(m[0]))
    if len(ordered) < 2 or decay_of(ordered[0][0]) != 0 or ordered[0][1].fit is None:
        return claim_result("decay_sphere", math.nan, np.array([]), inside, "no MuonH decay curves")
    none, most = ordered[0][1].sweep, ordered[-1][1].sweep
    units, values = [], []
    for lr in ordered[0][1].fit.lrs:
        for seed_index, run_seed in enumerate(none.seeds):
            if run_seed not in most.seeds or lr not in most.lrs:
                continue
            pair = (
                none.losses[list(none.lrs).index(lr), seed_index],
                most.losses[list(most.lrs).index(lr), most.seeds.index(run_seed)],
            )
            if all(math.isfinite(v) for v in pair):
                units.append((lr, run_seed))
                values.append(pair)
    if len(units) < 3:
        return claim_result("decay_sphere", math.nan, np.array([]), inside, "too few paired runs")
    # Cells are the two decay values; each (LR, seed) pairs one run of each.
    table = CellTable(np.array(values).T, tuple(range(len(units))), np.zeros(2, dtype=int))
    sample = bootstrap_cells(table, replicates=replicates, seed=seed + 3)
    estimate = float(sample.estimate[1] - sample.estimate[0])
    return claim_result(
        "decay_sphere",
        estimate,
        sample.replicates[:, 1] - sample.replicates[:, 0],
        inside,
        note=f"{len(units)} pairs of runs, decay {decay_of(ordered[-1][0]):g} against 0",
    )
