"""``hyperp reproduce``: run the paper's key studies at small scale and write a report."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from hyperp.cli import UserError, add_verb

DESCRIPTION = """\
Run the studies of the paper's claims (width, depth, weight decay, token budget, MoE, compute
leverage, stability) as sweeps, fit them, and write a markdown report with figures.

Sizes (the sweep files in studies/<size>/):
  --smoke   a few seconds per run: checks the pipeline end to end (CI)
  --quick   2 CPU cores, about an hour in all, corpus preparation included (default)
  --full    one GPU

Re-running resumes: finished runs are never redone, so the same command regenerates the same
report. --report-only skips training and analyses what is there.
Studies: width, depth, weight_decay, tokens, moe, compute, stability.
"""


def register(sub) -> None:
    parser = add_verb(
        sub,
        "reproduce",
        help="run the paper's studies at small scale and write REPORT.md with figures",
        description=DESCRIPTION,
        example="hyperp reproduce --quick --workers 2 --report REPORT.md",
    )
    size = parser.add_mutually_exclusive_group()
    for name in ("smoke", "quick", "full"):
        size.add_argument(
            f"--{name}", dest="size", action="store_const", const=name, help=f"{name} size"
        )
    parser.set_defaults(size="quick")
    parser.add_argument("--only", nargs="+", metavar="STUDY", help="run only these studies")
    parser.add_argument("--out", help="run directory root (default: runs/reproduce-SIZE)")
    parser.add_argument("--report", default="REPORT.md", help="report path (default REPORT.md)")
    parser.add_argument(
        "--figures", help="figure directory (default: report/figures beside the report)"
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
    parser.set_defaults(func=run)


def _settings(items: list[str]) -> dict[str, object]:
    import tomllib

    settings: dict[str, object] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or "." not in key:
            raise UserError(f"--set {item!r}: write --set SECTION.KEY=VALUE, e.g. train.threads=2")
        try:  # TOML value syntax for numbers and booleans; anything else is a string
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text
        settings[key] = value
    return settings


def run(args: argparse.Namespace) -> int:
    from hyperp.reproduce import ReproduceOptions, default_studies_dir, reproduce

    try:
        options = ReproduceOptions(
            size=args.size,
            only=tuple(args.only or ()),
            out=Path(args.out or f"runs/reproduce-{args.size}"),
            report=Path(args.report),
            figures=Path(args.figures) if args.figures else None,
            studies_dir=Path(args.studies) if args.studies else default_studies_dir(),
            workers=args.workers,
            threads_per_worker=args.threads_per_worker,
            settings=_settings(args.set),
            run=not args.report_only,
            command=shlex.join(["hyperp", "reproduce", *sys.argv[2:]])
            if len(sys.argv) > 1 and sys.argv[1] == "reproduce"
            else f"hyperp reproduce --{args.size}",
            log=lambda message: print(message, flush=True),
        )
    except ValueError as error:
        raise UserError(str(error)) from None
    try:
        reproduce(options)
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return 0
