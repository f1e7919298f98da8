"""``hyperp sweep``: run a grid of training runs, resumably, with a local worker pool."""

from __future__ import annotations

import argparse
import json
import sys

from hyperp.cli import UserError, add_verb

DESCRIPTION = """\
Run every combination of a sweep file's axes as a `hyperp train` run directory OUT/<name>.

  hyperp sweep SWEEP.toml            run (or resume) the sweep
  hyperp sweep SWEEP.toml --dry-run  list the runs, each with its LR, tokens and FLOPs
                                     (exit status 1 when a run's config is invalid)
  hyperp sweep status SWEEP.toml     show progress (finished, failed, running, pending);
                                     the sweep directory works in place of the file

A finished run (its summary.json exists) is never redone. A failed run gets error.txt, the
sweep goes on, and a later invocation skips it unless --retry-failed. Interrupting (Ctrl-C,
SIGTERM) stops the running trainings; running the same command again resumes. Runs asking for
several processes (train.nproc > 1) are launched with torchrun.

Sweep file:
  base = "base.toml"                     # training config relative to the sweep file,
                                         # or a preset name (tiny, d8_dense, d8_moe)
  out = "runs/lr-width"                  # default: runs/<sweep file stem>
  workers = 2
  [set]
  "train.steps" = 40                     # applied to every run
  [axes]
  "optim.lr" = [0.005, 0.01, 0.02]       # or { log_range = [1e-3, 1e-1], points = 5 }
  "model.width" = [32, 64]
"""


def register(sub) -> None:
    parser = add_verb(
        sub,
        "sweep",
        help="run a grid of training runs (resumable, parallel, failure-isolated)",
        description=DESCRIPTION,
        example="hyperp sweep sweeps/lr-width.toml --workers 2 --threads-per-worker 1",
    )
    parser.add_argument(
        "target",
        nargs="+",
        metavar="SWEEP.toml",
        help="the sweep file, or 'status SWEEP.toml'",
    )
    parser.add_argument("--out", help="sweep directory (overrides the file's out)")
    parser.add_argument("--workers", type=int, help="runs in parallel (default: the file's, or 1)")
    parser.add_argument(
        "--threads-per-worker",
        type=int,
        help="OMP/MKL threads per run (default: the file's, or CPUs / workers)",
    )
    parser.add_argument("--dry-run", action="store_true", help="list the runs; run nothing")
    parser.add_argument(
        "--retry-failed", action="store_true", help="run failed runs again (default: skip them)"
    )
    parser.add_argument(
        "--train-command",
        help="command that trains one run, given '--config BASE --out DIR --key value ...' "
        "(default: python -m hyperp train, or torchrun for train.nproc > 1)",
    )
    parser.add_argument("--json", action="store_true", help="status/dry-run as JSON")
    parser.set_defaults(func=run)


def _load(path: str, out: str | None):
    from hyperp.sweep import load_sweep

    return load_sweep(path, out=out)


def run(args: argparse.Namespace) -> int:
    target = list(args.target)
    if target[0] == "status":
        if len(target) != 2:
            raise UserError("usage: hyperp sweep status SWEEP.toml")
        return _status(_load(target[1], args.out), as_json=args.json)
    if len(target) != 1:
        raise UserError("give one sweep file (or 'status SWEEP.toml')")
    spec = _load(target[0], args.out)
    if args.workers is not None and args.workers < 1:
        raise UserError("--workers must be at least 1")
    if args.threads_per_worker is not None and args.threads_per_worker < 1:
        raise UserError("--threads-per-worker must be at least 1")
    if args.dry_run:
        return _dry_run(spec, as_json=args.json)
    return _run(spec, args)


def _status(spec, *, as_json: bool) -> int:
    from hyperp.sweep import sweep_status

    statuses = sweep_status(spec)
    counts: dict[str, int] = {}
    for status in statuses:
        counts[status.state] = counts.get(status.state, 0) + 1
    if as_json:
        print(
            json.dumps(
                {
                    "out": str(spec.out),
                    "counts": counts,
                    "runs": [s.__dict__ for s in statuses],
                },
                indent=2,
            )
        )
        return 0
    total = len(statuses)
    summary = ", ".join(f"{counts[state]} {state}" for state in sorted(counts))
    print(f"{spec.out}: {counts.get('finished', 0)}/{total} finished ({summary})")
    for status in statuses:
        line = f"  {status.state:<11} {status.name}"
        if status.error:
            line += f"  ({status.error})"
        print(line)
    return 0


def _dry_run(spec, *, as_json: bool) -> int:
    from hyperp.sweep import describe_plan, expand, plan_run, run_status

    rows = []
    for run_spec in expand(spec):
        rows.append(
            {
                "name": run_spec.name,
                "directory": str(run_spec.directory),
                "state": run_status(run_spec).state,
                "nproc": run_spec.nproc,
                "overrides": run_spec.overrides,
                "plan": plan_run(run_spec, spec.base),
            }
        )
    # A dry run is how a sweep is checked before spending compute: config errors fail it.
    broken = [row["name"] for row in rows if str(row["plan"]).startswith("config error")]
    if as_json:
        print(json.dumps({"out": str(spec.out), "runs": rows}, indent=2))
        return 1 if broken else 0
    print(f"{len(rows)} run(s) into {spec.out} (base {spec.base}):")
    for row in rows:
        action = "skip, finished" if row["state"] == "finished" else f"run, {row['state']}"
        procs = f", {row['nproc']} processes (torchrun)" if row["nproc"] > 1 else ""
        print(f"  {row['name']}  [{action}{procs}]  {describe_plan(row['plan'])}")
    if broken:
        print(f"{len(broken)} run(s) have config errors; fix the sweep or base config")
        return 1
    return 0


def _run(spec, args: argparse.Namespace) -> int:
    from hyperp.sweep import command_from_prefix, default_train_command, run_sweep

    launcher = (
        command_from_prefix(args.train_command) if args.train_command else default_train_command
    )

    def report(event: str, run_spec, error: str | None) -> None:
        if event == "queued":
            return
        text = f"[sweep] {event:<16} {run_spec.name}"
        if error:
            text += f": {error}"
        print(text, file=sys.stderr, flush=True)

    result = run_sweep(
        spec,
        workers=args.workers,
        threads_per_worker=args.threads_per_worker,
        retry_failed=args.retry_failed,
        train_command=launcher,
        on_event=report,
    )
    print(
        f"{len(result.finished)} finished now, {len(result.skipped)} skipped, "
        f"{len(result.failed)} failed"
        + (" (interrupted; run again to resume)" if result.interrupted else "")
    )
    for name, error in result.failed.items():
        print(f"  failed: {name}: {error}")
    if result.interrupted:
        return 130
    return 1 if result.failed else 0
