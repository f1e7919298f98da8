"""``hyperp sweep``: run a grid of training runs, resumably, with a local worker pool."""

from __future__ import annotations

import argparse
import json
import sys

from hyperp.cli import UserError, add_verb

DESCRIPTION = """\
Run every combination of a sweep file's axes as a `hyperp train` run directory OUT/<name>,
on this machine (a worker pool) or on SLURM (one job array, through submitit).

  hyperp sweep SWEEP.toml                  run (or resume) the sweep here
  hyperp sweep SWEEP.toml --launcher slurm submit it to SLURM and return once it is queued
  hyperp sweep SWEEP.toml --dry-run        list the runs, each with its LR, tokens and FLOPs
                                           (exit status 1 when a run's config is invalid)
  hyperp sweep status SWEEP.toml           each run: queued, running, finished, failed,
                                           interrupted or pending, with its SLURM job id and
                                           the reason; the sweep directory works in place of
                                           the file
  hyperp sweep cancel SWEEP.toml           cancel its SLURM jobs and stop its local runs

A finished run (its summary.json exists) is never redone, and a run that is queued or running
is never started twice. A failed run gets error.txt, the sweep goes on, and a later invocation
skips it unless --retry-failed. An interrupted run (Ctrl-C or SIGTERM to the sweep, a killed
trainer, a preempted or cancelled job) resumes from its checkpoint on the next invocation.
Runs asking for several processes (train.nproc > 1) are launched with torchrun. On SLURM, a job
warned of its time limit or preemption checkpoints and requeues itself.

Sweep file:
  base = "base.toml"                     # training config relative to the sweep file,
                                         # or a preset name (smoke, tiny, d8_dense, d8_moe)
  out = "runs/lr-width"                  # default: runs/<sweep file stem>
  workers = 2                            # local runs in parallel
  [set]
  "train.steps" = 40                     # applied to every run
  [axes]
  "optim.lr" = [0.005, 0.01, 0.02]       # or { log_range = [1e-3, 1e-1], points = 5 }
  "model.width" = [32, 64]
  [launcher]                             # optional (docs/cluster.md)
  kind = "slurm"                         # local (default) or slurm
  partition = "gpu"                      # also: nodes, gpus_per_node, cpus_per_task, mem,
  time = "4:00:00"                       # account, qos, constraint, array_parallelism,
                                         # sbatch = ["--exclusive"], setup = ["module load x"]
"""


def register(sub) -> None:
    parser = add_verb(
        sub,
        "sweep",
        help="run a grid of training runs (resumable, parallel, failure-isolated)",
        description=DESCRIPTION,
        example="hyperp sweep sweeps/lr-width.toml --workers 2 --threads-per-worker 1\n"
        "  hyperp sweep sweeps/ladder.toml --launcher slurm && hyperp sweep status runs/ladder",
    )
    parser.add_argument(
        "target",
        nargs="+",
        metavar="SWEEP.toml",
        help="the sweep file, or 'status SWEEP.toml', or 'cancel SWEEP.toml'",
    )
    parser.add_argument("--out", help="sweep directory (overrides the file's out)")
    parser.add_argument(
        "--launcher",
        choices=("local", "slurm"),
        help="where the runs go (default: the file's [launcher] kind, or local)",
    )
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
    if target[0] in ("status", "cancel"):
        if len(target) != 2:
            raise UserError(f"usage: hyperp sweep {target[0]} SWEEP.toml (or the sweep directory)")
        spec = _load(target[1], args.out)
        if target[0] == "status":
            return _status(spec, as_json=args.json)
        return _cancel(spec)
    if len(target) != 1:
        raise UserError("give one sweep file (or 'status SWEEP.toml', 'cancel SWEEP.toml')")
    spec = _load(target[0], args.out)
    if args.workers is not None and args.workers < 1:
        raise UserError("--workers must be at least 1")
    if args.threads_per_worker is not None and args.threads_per_worker < 1:
        raise UserError("--threads-per-worker must be at least 1")
    if args.dry_run:
        return _dry_run(spec, as_json=args.json)
    if (args.launcher or spec.launcher) == "slurm":
        return _submit(spec, args)
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
                    "runs": [vars(s) for s in statuses],
                },
                indent=2,
            )
        )
        return 0
    total = len(statuses)
    summary = ", ".join(f"{counts[state]} {state}" for state in sorted(counts))
    print(f"{spec.out}: {counts.get('finished', 0)}/{total} finished ({summary})")
    width = max(len(s.name) for s in statuses) if statuses else 0
    for status in statuses:
        line = f"  {status.state:<11} {status.name:<{width}}"
        if status.job_id:
            line += f"  job {status.job_id}"
        if status.reason:
            line += f"  ({status.reason})"
        print(line.rstrip())
    return 0


def _cancel(spec) -> int:
    from hyperp.sweep import cancel_sweep

    job_ids, local = cancel_sweep(spec)
    if not job_ids and not local:
        print(f"{spec.out}: nothing queued or running")
        return 0
    if job_ids:
        print(f"cancelled {len(job_ids)} SLURM job(s): {' '.join(job_ids)}")
    if local:
        print(f"stopped {len(local)} local run(s): {' '.join(local)}")
    print("their runs are interrupted; hyperp sweep resumes them from their checkpoints")
    return 0


def _dry_run(spec, *, as_json: bool) -> int:
    from hyperp.sweep import describe_plan, expand, plan_run, sweep_status

    rows = []
    for run_spec, status in zip(expand(spec), sweep_status(spec)):
        rows.append(
            {
                "name": run_spec.name,
                "directory": str(run_spec.directory),
                "state": status.state,
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


def _report(event: str, run_spec, detail: str | None) -> None:
    if event == "queued":
        return
    text = f"[sweep] {event:<16} {run_spec.name}"
    if detail:
        text += f": {detail}"
    print(text, file=sys.stderr, flush=True)


def _run(spec, args: argparse.Namespace) -> int:
    from hyperp.sweep import command_from_prefix, default_train_command, run_sweep

    launcher = (
        command_from_prefix(args.train_command) if args.train_command else default_train_command
    )
    result = run_sweep(
        spec,
        workers=args.workers,
        threads_per_worker=args.threads_per_worker,
        retry_failed=args.retry_failed,
        train_command=launcher,
        on_event=_report,
    )
    print(
        f"{len(result.finished)} finished now, {len(result.skipped)} skipped, "
        f"{len(result.failed)} failed"
        + (f", {len(result.stopped)} interrupted" if result.stopped else "")
        + (" (interrupted; run again to resume)" if result.interrupted else "")
    )
    for name, error in result.failed.items():
        print(f"  failed: {name}: {error}")
    for name, reason in result.stopped.items():
        print(f"  interrupted: {name}: {reason}")
    if result.interrupted:
        return 130
    return 1 if result.failed or result.stopped else 0


def _submit(spec, args: argparse.Namespace) -> int:
    import shlex

    from hyperp.sweep import submit_sweep

    if args.workers is not None or args.threads_per_worker is not None:
        raise UserError(
            "--workers and --threads-per-worker are for the local launcher; on SLURM set "
            "[launcher] array_parallelism and cpus_per_task"
        )
    prefix = shlex.split(args.train_command) if args.train_command else None
    result = submit_sweep(
        spec, retry_failed=args.retry_failed, train_prefix=prefix, on_event=_report
    )
    arrays = sorted({job_id.split("_")[0] for job_id in result.submitted.values()})
    print(
        f"{len(result.submitted)} submitted"
        + (f" (SLURM job {', '.join(arrays)})" if arrays else "")
        + f", {len(result.skipped)} skipped; follow with: hyperp sweep status {spec.out}"
    )
    return 0
