"""``hyperp fit``: LR optima, power laws, loss against compute and leverage from results."""

from __future__ import annotations

import argparse
import json
import sys

from hyperp.cli import UserError, add_verb

DESCRIPTION = """\
Fit the scaling analysis of docs/method.md §6 to finished runs or to a table of results.

Inputs: run directories (summary.json + config.json), sweep directories (searched for run
directories; failed runs are listed), or CSV/TSV/JSONL/JSON files with one row per run
(e.g. a W&B export with columns such as method, lr, val_loss, tokens, flops).
Dotted names (model.depth, optim.lr) reach into a run's config.

Defaults:
  --x lr, --y val_loss (or loss), --scale-axis tokens, --method-column method,
  --flops-column flops.
  --group-by: the method column plus whichever of group, depth, width, tokens, batch_tokens,
    seq_len take more than one value.
  For each group: the LR optimum (quadratic in ln LR fitted to the --window distinct LRs on each
    side of the best point, so diverged and far-off points do not bend it; 1000-sample residual
    bootstrap 95% interval), reported only when inside the LRs fitted, and flagged UNRELIABLE
    when its minimum lies below every observed loss by more than the grid and the noise allow,
    or the parabola fits its window poorly; sensitivity for every k from 3 to n-1.
  Power law of the optimum against --scale-axis within each family of groups, from reliable
    optima only (a power law through 2 scales is noted: it fits them exactly).
  Loss against compute per method (each group contributes its fitted optimum loss, or its best
    observed loss when there is none): A*C^-b + E with 4+ points, else A*C^-b.
  Leverage of every other method over the baseline (muon, else adamw, unless --baseline).
"""


def register(sub) -> None:
    parser = add_verb(
        sub,
        "fit",
        help="fit LR optima, power laws, loss against compute and leverage",
        description=DESCRIPTION,
        example=(
            "hyperp fit runs/sweep --scale-axis tokens --target 1e12 --baseline muon "
            "--method hyperp --report report/"
        ),
    )
    parser.add_argument(
        "paths", nargs="+", metavar="RUNS_OR_FILES", help="run/sweep directories or result files"
    )
    parser.add_argument(
        "--group-by", help="comma-separated columns to group runs by (one sweep each)"
    )
    parser.add_argument("--x", default="lr", help="LR column: lr (default) or base_lr under HyperP")
    parser.add_argument(
        "--y", help="loss column (default: val_loss, or loss when there is no val_loss)"
    )
    parser.add_argument(
        "--scale-axis", default="tokens", help="axis of the optimum's power law (default tokens)"
    )
    parser.add_argument(
        "--target", type=float, help="scale on --scale-axis at which to extrapolate the optimum"
    )
    parser.add_argument("--target-loss", type=float, help="report the compute each method needs")
    parser.add_argument("--target-flops", type=float, help="report each method's loss at C")
    parser.add_argument("--method-column", default="method", help="column naming the method")
    parser.add_argument("--flops-column", default="flops", help="column of training FLOPs")
    parser.add_argument("--baseline", help="baseline method for leverage (default muon/adamw)")
    parser.add_argument("--method", help="method whose leverage to report (default: all others)")
    offset = parser.add_mutually_exclusive_group()
    offset.add_argument(
        "--offset",
        dest="offset",
        action="store_true",
        default=None,
        help="always fit A*C^-b + E",
    )
    offset.add_argument(
        "--no-offset", dest="offset", action="store_false", help="always fit A*C^-b"
    )
    parser.add_argument(
        "--window",
        type=int,
        default=2,
        help="distinct LRs fitted on each side of the best point (default 2; 0: all points)",
    )
    parser.add_argument(
        "--bootstrap", type=int, default=1000, help="bootstrap resamples (default 1000; 0: none)"
    )
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    parser.add_argument("--report", metavar="DIR", help="write report.md, results.json and plots")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hyperp.analysis import FitOptions, analyze, format_summary, load_records, write_report

    if args.bootstrap < 0:
        raise UserError("--bootstrap must be 0 or more")
    if args.window < 0:
        raise UserError("--window must be 0 (every point) or more")
    group_by = None
    if args.group_by is not None:
        group_by = [name.strip() for name in args.group_by.split(",") if name.strip()]
    options = FitOptions(
        x=args.x,
        y=args.y,
        group_by=group_by,
        scale_axis=args.scale_axis,
        method_column=args.method_column,
        flops_column=args.flops_column,
        baseline=args.baseline,
        method=args.method,
        target=args.target,
        target_loss=args.target_loss,
        target_flops=args.target_flops,
        offset=args.offset,
        window=args.window or None,
        bootstrap=args.bootstrap,
        seed=args.seed,
    )
    loaded = load_records(args.paths)
    if not loaded.records:
        failed = f" ({len(loaded.failed)} failed run(s) found)" if loaded.failed else ""
        raise UserError(f"no finished runs or result rows in {' '.join(args.paths)}{failed}")
    study = analyze(loaded.records, options, failed=loaded.failed)
    if not study.compute and all(group.optimum is None for group in study.groups):
        reasons = {group.error for group in study.groups if group.error} or {
            "no group has an LR optimum; sweep at least 3 learning rates around the optimum"
        }
        raise UserError(f"nothing could be fitted: {'; '.join(sorted(reasons))}")
    if args.report:
        written = write_report(study, args.report)
        if not args.json:
            print(f"report written to {args.report} ({len(written)} files)", file=sys.stderr)
    if args.json:
        print(json.dumps(study.to_dict(), indent=2))
    else:
        print(format_summary(study), end="")
    return 0
