"""The SLURM launcher: a sweep's runs as one job array, submitted through submitit.

``submit_sweep`` returns once the jobs are queued; no process has to stay alive. Each run's
``launch.json`` records its job id (``ARRAY_TASK``, e.g. ``1234_5``), and submitit keeps the
jobs' scripts and logs in ``OUT/.slurm/``.

Each job runs :class:`TrainJob`: it starts the run's training inside the allocation (``python -m
hyperp train``; torchrun for several processes, with c10d rendezvous on the first node of the
allocation when the job spans nodes) and watches it.

Preemption and time limits: SLURM sends a warning signal (submitit's ``--signal=USR2@N``, N =
``signal_delay_s`` before the time limit, or ``scancel --signal=USR2`` on preemption) to every
process of the job. The trainer inherits that signal as ignored, since it knows only SIGINT and
SIGTERM; submitit catches it in the job and calls :meth:`TrainJob.checkpoint`, which sends the
trainer SIGTERM (it saves a checkpoint and exits) and lets submitit requeue the job
(``scontrol requeue``). The requeued job resumes from the checkpoint. SLURM's own SIGTERM
(``scancel``, ``scontrol requeue``, preemption in REQUEUE mode) reaches the trainer directly and
also ends in a checkpoint. A trainer that fails for any other reason is not requeued: the job
fails and ``error.txt`` says why.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hyperp.sweep.processes import stop_processes
from hyperp.sweep.records import clear_attempt, finish_run, write_launch, write_marker
from hyperp.sweep.spec import (
    RunSpec,
    SweepSpec,
    default_train_command,
    expand,
    sbatch_option,
    train_arguments,
    write_sweep_record,
)
from hyperp.sweep.status import sweep_status

__all__ = ["SubmitResult", "TrainJob", "allocation_command", "submit_sweep"]

# Multi-node rendezvous port on the first node: fixed base plus the job id, so that jobs
# sharing a node do not collide.
_RENDEZVOUS_PORT = 29400
# Margin kept, out of signal_delay_s, between the trainer's checkpoint and SLURM's kill.
_REQUEUE_MARGIN_S = 15


def allocation_command(
    run: RunSpec, base: Path, *, nodes: int, first_node: str, job_id: str
) -> list[str]:
    """The run's training command inside its allocation (one task per node)."""
    if run.nproc == 1:
        return default_train_command(run, base)
    per_node = run.nproc // nodes
    torchrun = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={per_node}"]
    if nodes == 1:
        torchrun.append("--standalone")
    else:
        port = _RENDEZVOUS_PORT + int(job_id) % 1000
        torchrun += [
            f"--nnodes={nodes}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={first_node}:{port}",
            f"--rdzv-id={job_id}",
        ]
    return [*torchrun, "-m", "hyperp", "train", *train_arguments(run, base)]


def _node_address(node: str) -> str:
    """Where the other nodes reach a node: its ``NodeAddr`` (the node name unless the cluster
    configures an address)."""
    try:
        shown = subprocess.run(
            ["scontrol", "show", "node", "--oneliner", node],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return node
    match = re.search(r"\bNodeAddr=(\S+)", shown.stdout)
    return match.group(1) if shown.returncode == 0 and match else node


class TrainJob:
    """What each SLURM job runs; submitit pickles it into ``OUT/.slurm/``. Plain data only."""

    def __init__(
        self, run: RunSpec, base: Path, train_prefix: Sequence[str] | None, signal_delay_s: int
    ) -> None:
        self.run = run
        self.base = base
        self.train_prefix = list(train_prefix) if train_prefix else None
        self.signal_delay_s = signal_delay_s
        self._reset()

    def _reset(self) -> None:
        self._process: subprocess.Popen | None = None
        self._return_code: int | None = None
        self._ended = threading.Event()
        self._log = self.run.directory / "train.log"
        self._stopped: str | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for name in ("_process", "_return_code", "_ended", "_log", "_stopped"):
            state.pop(name)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    def __call__(self) -> str:
        import submitit

        environment = submitit.JobEnvironment()
        main = environment.global_rank == 0  # the first node's task keeps the run's records
        directory = self.run.directory
        directory.mkdir(parents=True, exist_ok=True)
        if main:
            clear_attempt(directory)
        else:
            self._log = directory / f"train.node{environment.node}.log"
        signal.signal(signal.SIGTERM, self._on_slurm_stop)
        self._start(environment, warning=f"SIG{submitit.JobEnvironment.USR_SIG}")
        if main:
            write_marker(directory, self._process.pid, job_id=environment.job_id)
        # A thread waits for the trainer, so this (main) thread never holds the lock that
        # Popen.wait takes while the warning signal's handler (checkpoint) may run here.
        threading.Thread(target=self._wait, daemon=True).start()
        while self._return_code is None:
            time.sleep(0.5)
        if not main:
            return "done"
        outcome = finish_run(directory, self._return_code, self._log, stopped=self._stopped)
        if outcome.state == "failed":
            raise RuntimeError(f"{self.run.name} failed: {outcome.reason}")  # not requeued
        return outcome.state

    def _start(self, environment: Any, warning: str) -> None:
        """Start the training (torchrun for several processes) with its output in the log."""
        if self.train_prefix:
            command = [*self.train_prefix, *train_arguments(self.run, self.base)]
        else:
            command = allocation_command(
                self.run,
                self.base,
                nodes=environment.num_nodes,
                first_node=_node_address(environment.hostnames[0]),
                job_id=environment.raw_job_id,
            )
        # SLURM signals every process of the job. The warning signal must not kill the trainer.
        # SLURM's SIGTERM reaches each rank already, so torchrun must not pass on a second one
        # (the trainer takes a second signal as "stop now, without a checkpoint").
        ignored = [signal.Signals[warning]]
        if self._torchrun:
            ignored.append(signal.SIGTERM)
        with self._log.open("ab") as log:
            log.write(f"$ {shlex.join(command)}\n# SLURM job {environment.job_id}\n".encode())
            log.flush()
            self._process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._environment(environment.num_nodes),
                start_new_session=True,
                preexec_fn=lambda: [signal.signal(sig, signal.SIG_IGN) for sig in ignored],
            )

    @property
    def _torchrun(self) -> bool:
        return not self.train_prefix and self.run.nproc > 1

    def _on_slurm_stop(self, signum, frame) -> None:
        # The trainer got SIGTERM too and is saving a checkpoint; SLURM kills the rest later.
        self._stopped = "SLURM stopped the job (scancel, scontrol requeue, preemption)"

    def _wait(self) -> None:
        assert self._process is not None
        self._return_code = self._process.wait()
        self._ended.set()

    def _environment(self, nodes: int) -> dict[str, str]:
        environment = dict(os.environ)
        if "OMP_NUM_THREADS" not in environment:
            cpus = int(environment.get("SLURM_CPUS_PER_TASK", "1"))
            per_node = max(1, self.run.nproc // nodes)
            environment["OMP_NUM_THREADS"] = str(max(1, cpus // per_node))
        if self._torchrun:  # torchrun leaves SIGTERM alone (it is ignored, see _start)
            handled = "SIGINT,SIGHUP,SIGQUIT"
            environment["PET_SIGNALS_TO_HANDLE"] = handled  # torchrun's --signals-to-handle
            environment["TORCHELASTIC_SIGNALS_TO_HANDLE"] = handled  # older torch reads this
        return environment

    def checkpoint(self) -> Any:
        """submitit calls this when SLURM's warning signal arrives (time limit or preemption):
        the trainer checkpoints and exits, then submitit requeues the job with this object."""
        from submitit.helpers import DelayedSubmission

        if self._process is not None:
            grace = max(self.signal_delay_s - _REQUEUE_MARGIN_S, 10)
            stop_processes([self._process.pid], grace, every_process=self._torchrun)
            self._ended.wait(timeout=60)
            outcome = finish_run(
                self.run.directory,
                self._return_code or 0,
                self._log,
                stopped="preempted or near its time limit; requeued",
            )
            if outcome.state == "finished":
                raise SystemExit(0)  # finished while stopping: nothing to requeue
            if outcome.state == "failed":
                raise RuntimeError(f"{self.run.name} failed: {outcome.reason}")
        return DelayedSubmission(self)


@dataclass
class SubmitResult:
    submitted: dict[str, str] = field(default_factory=dict)  # run name -> job id
    skipped: dict[str, str] = field(default_factory=dict)  # run name -> its state


def _check_processes(run: RunSpec, nodes: int, gpus_per_node: int) -> None:
    per_node, remainder = divmod(run.nproc, nodes)
    if remainder or per_node == 0:
        raise ValueError(
            f"{run.name}: train.nproc {run.nproc} cannot be spread over {nodes} nodes; make "
            "train.nproc a multiple of [launcher] nodes"
        )
    if gpus_per_node and gpus_per_node != per_node:
        raise ValueError(
            f"{run.name}: {per_node} processes per node but gpus_per_node = {gpus_per_node}; "
            "give each process one GPU (set [launcher] gpus_per_node to train.nproc / nodes)"
        )


def _sbatch_parameters(spec: SweepSpec) -> dict[str, Any]:
    """submitit's SlurmExecutor parameters from the ``[launcher]`` table."""
    options = spec.slurm
    parameters: dict[str, Any] = {
        "job_name": f"hyperp-{spec.out.name}",
        "nodes": options.nodes,
        "ntasks_per_node": 1,  # one task per node; torchrun starts the ranks
        "time": options.time,
        "array_parallelism": options.array_parallelism,
        "signal_delay_s": options.signal_delay_s,
        "stderr_to_stdout": True,
        "additional_parameters": {
            "requeue": True,
            **dict(sbatch_option(line) for line in options.sbatch),
        },
    }
    for key in ("partition", "cpus_per_task", "mem", "account", "qos", "constraint"):
        if getattr(options, key) is not None:
            parameters[key] = getattr(options, key)
    if options.gpus_per_node:
        parameters["gpus_per_node"] = options.gpus_per_node
    if options.setup:
        parameters["setup"] = list(options.setup)
    return parameters


def _import_submitit():
    try:
        import submitit
    except ImportError:
        raise ValueError("the slurm launcher needs submitit: pip install 'hyperp[slurm]'") from None
    for tool in ("sbatch", "squeue", "srun"):
        if shutil.which(tool) is None:
            raise ValueError(
                f"{tool} not found: submit SLURM sweeps from a machine with the SLURM client "
                "(a login node), or use --launcher local"
            )
    return submitit


def submit_sweep(
    spec: SweepSpec,
    *,
    retry_failed: bool = False,
    train_prefix: Sequence[str] | None = None,
    on_event: Callable[[str, RunSpec, str | None], None] | None = None,
) -> SubmitResult:
    """Submit every run that is neither finished nor queued nor running (nor failed, unless
    ``retry_failed``) as one job array, and return once it is queued.

    ``train_prefix`` replaces ``python -m hyperp train`` (it receives ``--config BASE --out DIR
    --key value ...``), as ``--train-command`` does for the local launcher.
    """
    runs = expand(spec)
    for run in runs:
        _check_processes(run, spec.slurm.nodes, spec.slurm.gpus_per_node)
    submitit = _import_submitit()
    write_sweep_record(spec, runs)
    result = SubmitResult()
    todo = []
    for run, status in zip(runs, sweep_status(spec)):
        if status.state in ("pending", "interrupted") or (
            status.state == "failed" and retry_failed
        ):
            todo.append(run)
        else:
            result.skipped[run.name] = status.state
            if on_event:
                on_event(f"skip ({status.state})", run, status.reason)
    if not todo:
        return result
    executor = submitit.SlurmExecutor(
        folder=spec.out / ".slurm", max_num_timeout=spec.slurm.max_timeouts
    )
    executor.update_parameters(**_sbatch_parameters(spec))
    for run in todo:
        run.directory.mkdir(parents=True, exist_ok=True)
        clear_attempt(run.directory)
    jobs = []
    try:
        with executor.batch():
            for run in todo:
                job = TrainJob(run, spec.base, train_prefix, spec.slurm.signal_delay_s)
                jobs.append(executor.submit(job))
    except submitit.core.utils.FailedJobError as error:
        raise ValueError(
            f"sbatch refused the jobs ({str(error).strip()}); check the [launcher] table "
            "(partition, account, qos, time, sbatch)"
        ) from None
    for run, job in zip(todo, jobs):
        write_launch(
            run.directory,
            launcher="slurm",
            job_id=job.job_id,
            log=str(job.paths.stdout),
            command=[*(train_prefix or ["hyperp", "train"]), *train_arguments(run, spec.base)],
            overrides=run.overrides,
            nproc=run.nproc,
        )
        result.submitted[run.name] = job.job_id
        if on_event:
            on_event("submitted", run, job.job_id)
    return result
