"""``hyperp reproduce``: the paper's claims (docs/method.md §1) tested at an affordable scale.

- :mod:`~hyperp.reproduce.catalogue`: what a study and a claim are, and the thresholds;
- :mod:`~hyperp.reproduce.studies`: one module per study, holding its catalogue entry, its
  claims (fixed before any run) and its measures (fits and intervals through
  :mod:`hyperp.analysis`);
- :mod:`~hyperp.reproduce.runner`: sweep files split into LR curves, run through
  :mod:`hyperp.sweep` with adaptive phases and settings derived from other studies;
- :mod:`~hyperp.reproduce.verdicts`: three-way verdicts;
- :mod:`~hyperp.reproduce.results` and :mod:`~hyperp.reproduce.report`: ``results.json``
  and the REPORT.md rendered from it.

Sizes (``studies/<size>/``): ``smoke`` checks the pipeline, ``quick`` fits 2 CPU cores in 90
minutes, ``full`` is sized for one GPU. The report goes into the output directory unless
``report`` names another place (the committed ``REPORT.md`` is written only when asked).
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hyperp.fileio import atomic_write_text
from hyperp.reproduce.catalogue import THRESHOLDS
from hyperp.reproduce.report import render_markdown
from hyperp.reproduce.results import (
    FORMAT,
    describe_data,
    dumps,
    load_results,
    merge_results,
    study_entry,
    thresholds,
)
from hyperp.reproduce.runner import SIZES, Runner, default_studies_dir
from hyperp.reproduce.studies import ANALYZERS, CLAIMS, STUDIES, study
from hyperp.reproduce.verdicts import judge

__all__ = [
    "CLAIMS",
    "SIZES",
    "STUDIES",
    "THRESHOLDS",
    "ReproduceOptions",
    "check_corpus",
    "default_studies_dir",
    "judge",
    "reproduce",
]

BOOTSTRAP_SEED = 0
BOOTSTRAP_METHOD = (
    "a residual bootstrap that keeps the design. Each run's loss is its curve's fitted value "
    "(the parabola near the optimum, or a cell's mean) plus its seed's offset plus, on an LR "
    "curve, its seed's tilt in ln(LR) plus a deviation; a replicate draws every deviation with "
    "replacement from all the curve family's deviations (pooled per family, rescaled for the "
    "parameters fitted and widened by the t/normal quantile ratio of their degrees of freedom) "
    "and a new tilt for every seed from the spread of the tilts measured between seeds "
    "(less what the deviations already carry, widened likewise), keeps the LRs, seeds and "
    "pairing (a seed's offset is shared by the runs it pairs, so it cancels in their "
    "comparison), and redoes every fit downstream: each curve's window, best LR and the "
    "acceptance of its optimum by the point estimate's own rule, then exponents, drifts, "
    "interpolated leverage. The interval is the 2.5-97.5 percentile range; it is unbounded "
    "when more than 5% of the replicates have no value (the share dropped is reported)."
)


@dataclass
class ReproduceOptions:
    size: str = "quick"
    only: tuple[str, ...] = ()
    out: Path | None = None  # default: runs/reproduce-SIZE
    report: Path | None = None  # default: OUT/REPORT.md
    studies_dir: Path = field(default_factory=default_studies_dir)
    workers: int = 2
    threads_per_worker: int = 1
    settings: dict[str, Any] = field(default_factory=dict)  # applied to every run
    run: bool = True  # False: report from existing runs only
    command: str = ""  # the command line that regenerates the report (printed in it)
    log: Callable[[str], None] = print

    def __post_init__(self) -> None:
        if self.size not in SIZES:
            raise ValueError(f"size must be one of {', '.join(SIZES)}; got {self.size!r}")
        for name in self.only:
            study(name)  # names the valid studies when one is unknown
        if self.workers < 1 or self.threads_per_worker < 1:
            raise ValueError("workers and threads per worker must be at least 1")
        if self.out is None:
            self.out = Path(f"runs/reproduce-{self.size}")
        if self.report is None:
            self.report = self.out / "REPORT.md"

    @property
    def selected(self) -> list[str]:
        """The studies named with ``only``; without it, every study but the diagnoses, which
        run only when named (they would take ``--quick`` past its 90 minutes)."""
        if self.only:
            return [s.name for s in STUDIES if s.name in self.only]
        return [s.name for s in STUDIES if not s.on_request]

    @property
    def report_files(self) -> Path:
        """Figures and ``results.json`` go to ``report/`` beside the report."""
        assert self.report is not None
        return self.report.parent / "report"

    def runner(self) -> Runner:
        assert self.out is not None
        return Runner(
            size=self.size,
            studies_dir=self.studies_dir,
            out=self.out,
            settings=self.settings,
            workers=self.workers,
            threads_per_worker=self.threads_per_worker,
            train=self.run,
            log=self.log,
        )

    def base_command(self) -> list[str]:
        """The command without ``--only`` or ``--report-only``: the one that regenerates (and,
        where runs are missing, trains) every section."""
        words = shlex.split(self.command) if self.command else ["hyperp", "reproduce"]
        kept, in_only = [], False
        for word in words:
            if word == "--only":
                in_only = True
                continue
            if in_only and not word.startswith("-"):
                continue
            in_only = False
            if word != "--report-only":
                kept.append(word)
        if not any(word in kept for word in ("--smoke", "--quick", "--full")):
            kept.append(f"--{self.size}")
        return kept


def check_corpus(runner: Runner, names: list[str]) -> None:
    """Refuse a corpus some run would go over more than once (docs/method.md: no repeated data)."""
    plans = runner.plan(names)
    largest = max((row["max_tokens"] for row in plans), default=0)
    if not largest:
        return
    config = None
    for name in names:
        for arm in study(name).arms:
            spec = runner.arm_spec(arm.stem)
            config = runner._config(spec, {k: v[0] for k, v in spec.axes.items()})
            break
        if config is not None:
            break
    if config is None:
        return
    from hyperp.data import run_corpus

    corpus = run_corpus(config, prepare=True)
    if config.data.path:
        where = f"the corpus at {config.data.path}"
    else:
        where = "the built-in corpus (the Python standard library's sources, about 12M tokens)"
    available = len(corpus.train)
    if largest > available:
        raise ValueError(
            f"the {runner.size_name} studies train up to {largest:,} tokens per run, but "
            f"{where} has {available:,} training tokens: runs would repeat data. Bring a larger "
            "corpus: `hyperp prepare TEXT_FILES --out DIR` (or a directory of llm.c FineWeb .bin "
            "shards), then pass --set data.path=DIR"
        )


def reproduce(options: ReproduceOptions) -> Path:
    """Run (or resume) the selected studies, analyse them, and write the report."""
    started = time.monotonic()
    runner = options.runner()
    selected = options.selected
    report = options.report
    assert report is not None and options.out is not None
    results_path = options.report_files / "results.json"
    out_text = _display(options.out, report.parent)
    existing = load_results(results_path)
    # Refuse to mix sizes before anything is trained or written.
    merge_results(existing, {}, size=options.size, out=out_text, replace_all=not options.only)
    if options.run:
        check_corpus(runner, list(dict.fromkeys(study(n).reads or n for n in selected)))
        for name in selected:
            item = study(name)
            options.log(f"{item.title}")
            runner.run_study(item if not item.reads else study(item.reads))
    figures = options.report_files / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    bootstrap = {"replicates": runner.size.replicates, "seed": BOOTSTRAP_SEED, "level": 0.95}
    fresh = {}
    records = []
    base = options.base_command()
    for index, name in enumerate(selected):
        # A replicate without an optimum may overflow exp(): it is an undefined replicate,
        # which percentile_interval counts.
        with np.errstate(over="ignore"):
            result = ANALYZERS[name](runner, figures, BOOTSTRAP_SEED + 1000 * index)
        records += result.records
        command = shlex.join([*base, "--only", name])
        fresh[name] = study_entry(result, command, report.parent, bootstrap)
    studies = merge_results(
        existing, fresh, size=options.size, out=out_text, replace_all=not options.only
    )
    counted = [entry["runs"] for name, entry in studies.items() if not study(name).reads]
    # Runs trained for another study's derived setting count once, unless that study is here.
    inputs = {
        (i["study"], i["what"]): i
        for entry in counted
        for i in entry.get("inputs", [])
        if i["study"] not in studies
    }
    runs = {
        key: sum(entry[key] for entry in counted) + sum(i.get(key, 0) for i in inputs.values())
        for key in ("finished", "diverged", "failed", "training_hours")
    }
    runs["max_tokens"] = max((entry.get("max_tokens", 0) for entry in counted), default=0)
    data = describe_data(records) if records else (existing or {}).get("data", {})
    results = {
        "format": FORMAT,
        "size": options.size,
        "size_description": SIZES[options.size].description,
        "command": shlex.join(base),
        "on_request": [name for name in studies if study(name).on_request],
        "runs_dir": out_text,
        "results_file": _display(results_path, report.parent),
        "thresholds": thresholds(),
        "bootstrap": {**bootstrap, "method": BOOTSTRAP_METHOD},
        "runs": runs,
        "data": data,
        "studies": studies,
    }
    atomic_write_text(results_path, dumps(results))
    atomic_write_text(report, render_markdown(load_results(results_path) or {}))
    options.log(f"report: {report} ({time.monotonic() - started:.0f}s)")
    return report


def _display(path: Path, relative_to: Path) -> str:
    import os

    try:
        return os.path.relpath(path.resolve(), relative_to.resolve())
    except ValueError:
        return str(path)
