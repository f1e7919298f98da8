"""``hyperp reproduce``: run the paper's studies at small scale and write a report."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from hyperp.cli import UserError, add_verb

DESCRIPTION = """\
Test the paper's claims (docs/method.md §1) with studies designed to isolate each one: weight decay,
width, depth, token budget, batch size, MoE granularity, compute leverage and stability. Every
claim is judged by a 95% interval against a threshold fixed in advance: it holds, is
contradicted, or is not resolved at this scale (and a study far from the paper's training regime
says so). The report (REPORT.md, report/figures, report/results.json) is rendered from the
structured results.

Sizes (the sweep files in studies/<size>/):
  --smoke   a few seconds per run: checks the pipeline end to end (CI)
  --quick   2 CPU cores, at most 90 minutes, corpus preparation included (default)
  --full    one GPU, about an hour on an H100; needs a corpus larger than the built-in one
            (hyperp prepare, or llm.c FineWeb .bin shards, with --set data.path=DIR)

The report goes to OUT/REPORT.md; the committed REPORT.md is written only with
--report-to REPORT.md. Re-running resumes: finished runs are never redone, so the same command
regenerates the same report. --report-only trains nothing; --plan prints each study's runs,
tokens and FLOPs and exits.
Studies: weight_decay, width, depth, tokens, batch, moe, compute, stability; and three that
diagnose the width drift, run only when named with --only (after the others, whose report they
join): width_roles, width_tokens, width_pairs.
"""


def register(sub) -> None:
    parser = add_verb(
        sub,
        "reproduce",
        help="test the paper's claims at small scale and write a report with verdicts",
        description=DESCRIPTION,
        example="hyperp reproduce --quick --workers 2 --report-to REPORT.md",
    )
    size = parser.add_mutually_exclusive_group()
    for name in ("smoke", "quick", "full"):
        size.add_argument(
            f"--{name}", dest="size", action="store_const", const=name, help=f"{name} size"
        )
    parser.set_defaults(size="quick")
    parser.add_argument("--only", nargs="+", metavar="STUDY", help="run only these studies")
    parser.add_argument("--out", help="run directory root (default: runs/reproduce-SIZE)")
    parser.add_argument(
        "--report-to",
        metavar="PATH",
        help="write the report here, figures and results.json in report/ beside it "
        "(default: OUT/REPORT.md)",
    )
    parser.add_argument("--studies", help="studies directory (default: ./studies)")
    parser.add_argument("--workers", type=int, default=2, help="runs in parallel (default 2)")
    parser.add_argument(
        "--threads-per-worker", type=int, default=1, help="threads per run (default 1)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override for every run, e.g. --set data.path=/data/tokens (repeatable)",
    )
    parser.add_argument(
        "--report-only", action="store_true", help="train nothing; report from existing runs"
    )
    parser.add_argument(
        "--plan",
        action="store_true",
        help="print each study's runs, tokens and FLOPs; train nothing",
    )
    parser.set_defaults(func=run)


def _settings(items: list[str]) -> dict[str, object]:
    """``--set SECTION.KEY=VALUE`` items, typed by the config's own override parser."""
    from hyperp.train.config import parse_overrides

    words = []
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or "." not in key:
            raise UserError(f"--set {item!r}: write --set SECTION.KEY=VALUE, e.g. train.threads=2")
        words += [f"--{key}", text]
    try:
        nested = parse_overrides(words)
    except ValueError as error:
        raise UserError(f"--set: {error}") from None
    return {
        f"{section}.{key}": value
        for section, table in nested.items()
        for key, value in table.items()
    }


def run(args: argparse.Namespace) -> int:
    from hyperp.reproduce import ReproduceOptions, default_studies_dir, reproduce

    command = (
        shlex.join(["hyperp", "reproduce", *sys.argv[2:]])
        if len(sys.argv) > 1 and sys.argv[1] == "reproduce"
        else f"hyperp reproduce --{args.size}"
    )
    try:
        options = ReproduceOptions(
            size=args.size,
            only=tuple(args.only or ()),
            out=Path(args.out) if args.out else None,
            report=Path(args.report_to) if args.report_to else None,
            studies_dir=Path(args.studies) if args.studies else default_studies_dir(),
            workers=args.workers,
            threads_per_worker=args.threads_per_worker,
            settings=_settings(args.set),
            run=not (args.report_only or args.plan),
            command=command,
            log=lambda message: print(message, flush=True),
        )
    except ValueError as error:
        raise UserError(str(error)) from None
    if args.plan:
        _print_plan(options)
        return 0
    try:
        reproduce(options)
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return 0


def _print_plan(options) -> None:
    rows = options.runner().plan(options.selected)
    print(f"{'study':<14}{'grid runs':>10}{'largest run (tokens)':>22}{'grid FLOPs':>14}")
    for row in rows:
        print(f"{row['study']:<14}{row['runs']:>10}{row['max_tokens']:>22,}{row['flops']:>14.3g}")
    total = sum(r["flops"] for r in rows)
    print(f"{'total':<14}{sum(r['runs'] for r in rows):>10}{'':>22}{total:>14.3g}")
    print("(the grid phase only: extensions add runs around optima at the grid's edges)")
