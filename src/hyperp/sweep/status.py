"""The state of each run of a sweep: its run directory, and for SLURM jobs the scheduler.

A run is ``queued`` or ``running`` while SLURM lists its job as such (``squeue``, which also
shows jobs that ended in the last few minutes; ``sacct`` fills in older ones where accounting
exists), or while the process a local sweep started for it is alive; ``finished`` once it has a
``summary.json``; ``failed`` with an ``error.txt``; ``interrupted`` when it stopped before
finishing for any other reason (it resumes from its checkpoint on the next ``hyperp sweep``);
``pending`` when it was never launched.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from hyperp.sweep.processes import stop_processes
from hyperp.sweep.records import error_reason, read_launch, read_marker
from hyperp.sweep.spec import RunSpec, SweepSpec, expand

__all__ = [
    "STATES",
    "JobState",
    "RunStatus",
    "cancel_sweep",
    "query_jobs",
    "run_status",
    "sweep_status",
]

STATES = ("queued", "running", "finished", "failed", "interrupted", "pending")
# SLURM job states (squeue %T, sacct State) grouped by what they mean for a run.
_QUEUED = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "CONFIGURING"}
_RUNNING = {"RUNNING", "COMPLETING", "SIGNALING", "STAGE_OUT", "RESIZING", "SUSPENDED", "STOPPED"}


@dataclass(frozen=True)
class RunStatus:
    name: str
    state: str  # one of STATES
    reason: str | None = None
    job_id: str | None = None  # the SLURM job (array task) that runs or ran it
    launcher: str | None = None  # local | slurm, from launch.json


@dataclass(frozen=True)
class JobState:
    state: str  # SLURM's, e.g. PENDING, RUNNING, CANCELLED
    reason: str = ""  # squeue's reason for a pending job, sacct's exit code for an ended one


def _run_scheduler_command(command: list[str]) -> subprocess.CompletedProcess | None:
    path = shutil.which(command[0])
    if path is None:
        return None
    try:
        return subprocess.run(
            [path, *command[1:]], capture_output=True, text=True, timeout=120, check=False
        )
    except subprocess.TimeoutExpired as error:
        raise ValueError(f"{command[0]} did not answer in 2 minutes; try again") from error


def query_jobs(job_ids: Iterable[str]) -> dict[str, JobState]:
    """SLURM's view of these jobs (``123`` or array tasks ``123_4``); jobs it has forgotten are
    absent. Raises ValueError when there are jobs to ask about but no ``squeue`` here."""
    wanted = {job_id for job_id in job_ids if job_id}
    if not wanted:
        return {}
    arrays = ",".join(sorted({job_id.split("_")[0] for job_id in wanted}))
    listed = _run_scheduler_command(
        ["squeue", "--noheader", "--array", "--states=all", "--format=%i|%T|%r", f"--jobs={arrays}"]
    )
    if listed is None:
        raise ValueError(
            "this sweep has SLURM jobs, but squeue is not available here; run the command on a "
            "machine with the SLURM client (a login node)"
        )
    # squeue exits 1 when it knows none of the jobs: they all ended a while ago.
    if listed.returncode != 0 and "Invalid job id" not in listed.stderr:
        raise ValueError(f"squeue failed: {listed.stderr.strip() or listed.returncode}")
    jobs = {}
    for line in listed.stdout.splitlines():
        job_id, state, reason = (part.strip() for part in line.split("|", 2))
        jobs[job_id] = JobState(state, "" if reason == "None" else reason)
    missing = wanted - set(jobs)
    if missing:
        jobs.update(_accounting(missing))
    return {job_id: state for job_id, state in jobs.items() if job_id in wanted}


def _accounting(job_ids: set[str]) -> dict[str, JobState]:
    """Final states of ended jobs from ``sacct``; empty where accounting is not configured."""
    jobs_flag = f"--jobs={','.join(sorted(job_ids))}"
    ended = _run_scheduler_command(
        ["sacct", "--noheader", "--parsable2", "--format=JobID,State,ExitCode", jobs_flag]
    )
    if ended is None or ended.returncode != 0:
        return {}
    jobs = {}
    for line in ended.stdout.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[0] in job_ids:  # not the job's steps (123_4.batch)
            state = parts[1].split()[0] if parts[1].split() else "UNKNOWN"
            jobs[parts[0]] = JobState(state, f"exit code {parts[2]}")
    return jobs


def run_status(run: RunSpec, jobs: Mapping[str, JobState] | None = None) -> RunStatus:
    """The state of one run; ``jobs`` is :func:`query_jobs` for the SLURM jobs of the sweep."""
    directory = run.directory
    launch = read_launch(directory)
    launcher = launch.get("launcher")
    job_id = launch.get("job_id") if launcher == "slurm" else None
    job = (jobs or {}).get(job_id) if job_id else None

    def status(state: str, reason: str | None = None) -> RunStatus:
        return RunStatus(run.name, state, reason, job_id, launcher)

    if (directory / "summary.json").exists():
        return status("finished")
    if job is not None and job.state in _QUEUED:
        return status("queued", job.reason or None)
    if job is not None and job.state in _RUNNING:
        return status("running")
    marker = read_marker(directory) if job_id is None else {}
    if marker.get("alive"):
        return status("running", f"pid {marker['pid']}")
    if marker and marker.get("alive") is None:
        return status("running", f"pid {marker.get('pid')} on {marker['host']} (not checked)")
    if (directory / "error.txt").exists():
        return status("failed", error_reason(directory))
    ended = f"job {job_id} {job.state if job else 'ended'}" if job_id else None
    interrupted = directory / "interrupted.txt"
    if interrupted.exists():
        reason = interrupted.read_text(errors="replace").strip()
        return status("interrupted", f"{reason} ({ended})" if ended else reason)
    if launch or marker or (directory / "config.json").exists():
        if ended:
            reason = f"{ended} without a result; its log: {launch.get('log')}"
        else:
            reason = "the process ended without a result (no summary.json or error.txt)"
        return status("interrupted", reason)
    return status("pending")


def sweep_status(spec: SweepSpec) -> list[RunStatus]:
    """The state of every run of the sweep, asking SLURM once about all its unfinished jobs."""
    runs = expand(spec)
    job_ids = []
    for run in runs:
        launch = read_launch(run.directory)
        if launch.get("launcher") == "slurm" and not (run.directory / "summary.json").exists():
            job_ids.append(launch.get("job_id"))
    jobs = query_jobs(job_ids)
    return [run_status(run, jobs) for run in runs]


def cancel_sweep(spec: SweepSpec, *, grace_s: float = 60.0) -> tuple[list[str], list[str]]:
    """Cancel the sweep's queued and running SLURM jobs (``scancel``: the trainers checkpoint on
    SLURM's SIGTERM) and stop the processes of local runs on this host. Returns the job ids and
    the names of the local runs stopped."""
    runs = {run.name: run for run in expand(spec)}
    statuses = sweep_status(spec)
    job_ids = [s.job_id for s in statuses if s.job_id and s.state in ("queued", "running")]
    if job_ids:
        cancelled = _run_scheduler_command(["scancel", *job_ids])
        if cancelled is None or cancelled.returncode != 0:
            raise ValueError(
                "scancel failed: "
                + (cancelled.stderr.strip() if cancelled else "scancel is not available here")
            )
    local = {}
    for status in statuses:
        if status.state == "running" and status.job_id is None:
            marker = read_marker(runs[status.name].directory)
            if marker.get("alive"):
                local[status.name] = marker["pid"]
    stop_processes(local.values(), grace_s)
    return job_ids, sorted(local)
