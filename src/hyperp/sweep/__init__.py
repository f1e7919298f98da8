"""Sweeps: a base config plus axes, expanded into runs, run on this machine or on SLURM.

A sweep file (TOML)::

    base = "base.toml"            # the base training config (relative to this file) or a
                                  # preset name from hyperp/configs (smoke, tiny, d8_dense, d8_moe)
    out = "runs/lr-width"         # sweep directory (default: runs/<file stem> beside this file)
    workers = 2                   # local launcher: runs in parallel (CLI --workers overrides)
    threads_per_worker = 1        # local launcher: OMP/MKL threads per run (default: CPUs / workers)

    [set]                         # overrides applied to every run
    "train.steps" = 40

    [axes]                        # the grid: every combination of these values is one run
    "optim.lr" = [0.005, 0.01, 0.02]
    "model.width" = [32, 64]
    # "optim.base_lr" = { log_range = [1e-3, 1e-1], points = 5 }   (geometric spacing)

    [launcher]                    # optional; CLI --launcher overrides kind
    kind = "slurm"                # local (default) | slurm
    partition = "gpu"             # and: nodes, gpus_per_node, cpus_per_task, mem, time,
    time = "4:00:00"              # account, qos, constraint, array_parallelism, sbatch (extra
    gpus_per_node = 8             # options), setup (shell lines), signal_delay_s, max_timeouts

Keys are the trainer's dotted config keys (``section.key``), written quoted or as nested tables.
Under HyperP the LR axis can be the base LR: each run's peak LR is then derived by the transfer
rules inside the trainer, so sweeps at different scales line up when transfer works.

Every run is an ordinary ``hyperp train`` run directory ``OUT/<name>``, where the name is made
from the run's axis values (deterministic, so a re-run finds its runs). A run is finished when
its ``summary.json`` exists and is never redone; a failed run gets ``error.txt`` and the sweep
goes on; an interrupted run (a stopped sweep, a killed process, a preempted job) resumes from
its checkpoint on the next ``hyperp sweep``, which also never starts a run that is queued or
running. The local launcher is :func:`run_sweep`, the SLURM one :func:`submit_sweep` (one job
array through submitit); :func:`sweep_status` and :func:`cancel_sweep` serve both.
"""

from hyperp.sweep.local import SweepResult, run_sweep
from hyperp.sweep.slurm import SubmitResult, submit_sweep
from hyperp.sweep.spec import (
    LAUNCHERS,
    RunSpec,
    SlurmOptions,
    SweepSpec,
    command_from_prefix,
    default_train_command,
    describe_plan,
    expand,
    load_sweep,
    plan_run,
    run_name,
    train_arguments,
)
from hyperp.sweep.status import STATES, RunStatus, cancel_sweep, run_status, sweep_status

__all__ = [
    "LAUNCHERS",
    "STATES",
    "RunSpec",
    "RunStatus",
    "SlurmOptions",
    "SubmitResult",
    "SweepResult",
    "SweepSpec",
    "cancel_sweep",
    "command_from_prefix",
    "default_train_command",
    "describe_plan",
    "expand",
    "load_sweep",
    "plan_run",
    "run_name",
    "run_status",
    "run_sweep",
    "submit_sweep",
    "sweep_status",
    "train_arguments",
]
