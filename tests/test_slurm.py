"""`hyperp sweep --launcher slurm` against a real one-node SLURM (scripts/slurm/).

The cluster is the one ``SLURM_CONF`` points to when it answers, else one started here with
``scripts/slurm/start-local-slurm.sh`` (root only; it installs slurm-wlm and munge when they are
missing) and stopped at the end; the two-node test starts a second one that splits the
machine in two. Without root or packages the tests skip and say why, unless
``HYPERP_REQUIRE_SLURM=1`` (CI), where that is a failure. Runs are tiny (depth 2, width 32) and
use one CPU each: the machine has two.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hyperp.sweep import load_sweep, sweep_status
from hyperp.train.checkpoint import load_model_weights
from support import subprocess_env

pytestmark = pytest.mark.slurm

ROOT = Path(__file__).resolve().parents[1]
START = ROOT / "scripts" / "slurm" / "start-local-slurm.sh"
STOP = ROOT / "scripts" / "slurm" / "stop-local-slurm.sh"


def _answers(environment: dict[str, str]) -> bool:
    try:
        probe = subprocess.run(
            ["sinfo", "--noheader"], env=environment, capture_output=True, timeout=20
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def _unavailable(reason: str):
    if os.environ.get("HYPERP_REQUIRE_SLURM") == "1":
        pytest.fail(f"SLURM is required here (HYPERP_REQUIRE_SLURM=1) but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def slurm() -> dict[str, str]:
    """Environment for commands that talk to the cluster."""
    environment = subprocess_env()
    if os.environ.get("SLURM_CONF") and _answers(environment):
        yield environment
        return
    if os.geteuid() != 0:
        _unavailable(
            "no SLURM answers (SLURM_CONF) and starting one needs root: run "
            "scripts/slurm/start-local-slurm.sh as root, then export SLURM_CONF as it prints"
        )
    started = subprocess.run(["bash", str(START)], capture_output=True, text=True, timeout=900)
    if started.returncode == 3:
        _unavailable(f"a local SLURM cannot be had: {started.stderr.strip()}")
    assert started.returncode == 0, started.stderr
    conf = re.search(r"export SLURM_CONF=(\S+)", started.stdout).group(1)
    environment["SLURM_CONF"] = conf
    try:
        yield environment
    finally:
        subprocess.run(["bash", str(STOP)], capture_output=True, timeout=120)


BASE = """
[model]
depth = 2
width = 32
head_dim = 16
n_kv_heads = 2
context = 32
head_init_rule = "inverse_width"
base_width = 64

[data]
path = "{corpus}"
vocab_size = 512

[train]
steps = {steps}
batch_size = 8
seq_len = 32
log_every = 4
eval_every = 40
eval_batches = 2
checkpoint_every = 40
monitor_every = 0
progress = false
threads = 1
"""


def write_sweep(directory: Path, corpus: Path, *, steps: int, axes: str, launcher: str) -> Path:
    (directory / "base.toml").write_text(BASE.format(corpus=corpus, steps=steps))
    sweep = directory / "sweep.toml"
    sweep.write_text(f'base = "base.toml"\n[axes]\n{axes}\n[launcher]\n{launcher}\n')
    return sweep


def hyperp(environment: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hyperp", *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture
def jobs_cancelled_after(slurm):
    """Sweep files (or (file, environment) pairs for another cluster) whose jobs are cancelled
    when the test ends, so a failure frees the CPUs."""
    sweeps: list = []
    yield sweeps
    for entry in sweeps:
        sweep, environment = entry if isinstance(entry, tuple) else (entry, slurm)
        hyperp(environment, "sweep", "cancel", str(sweep))


def wait_until(condition, timeout_s: float, what: str, poll_s: float = 0.2):
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(poll_s)


def states(sweep: Path, environment: dict[str, str]) -> dict[str, dict]:
    status = hyperp(environment, "sweep", "status", str(sweep), "--json")
    assert status.returncode == 0, status.stderr
    return {run["name"]: run for run in json.loads(status.stdout)["runs"]}


def settled(sweep: Path, environment: dict[str, str]):
    runs = states(sweep, environment)
    return runs if all(r["state"] not in ("queued", "running") for r in runs.values()) else None


def squeue(environment: dict[str, str], *job_ids: str) -> dict[str, str]:
    listed = subprocess.run(
        ["squeue", "--noheader", "--array", "--format=%i|%T", f"--jobs={','.join(job_ids)}"],
        env=environment,
        capture_output=True,
        text=True,
        check=False,
    )
    return dict(line.split("|") for line in listed.stdout.split())


def test_a_sweep_finishes_a_forced_failure_is_reported_and_a_rerun_submits_nothing(
    slurm, corpus, tmp_path, jobs_cancelled_after
):
    # Width 40 gives 5 query heads for 2 KV heads: that run's trainer refuses its config.
    sweep = write_sweep(
        tmp_path,
        corpus,
        steps=24,
        axes='"model.width" = [32, 64, 96, 40]',
        launcher='cpus_per_task = 1\ntime = "0:10:00"\narray_parallelism = 2\n'
        'sbatch = ["--comment=hyperp-test"]',
    )
    jobs_cancelled_after.append(sweep)
    submitted = hyperp(slurm, "sweep", str(sweep), "--launcher", "slurm")
    assert submitted.returncode == 0, submitted.stderr
    assert "4 submitted (SLURM job " in submitted.stdout, submitted.stdout
    out = tmp_path / "runs" / "sweep"
    names = ("width=32", "width=64", "width=96", "width=40")
    job_ids = {
        name: json.loads((out / name / "launch.json").read_text())["job_id"] for name in names
    }
    array = job_ids["width=32"].split("_")[0]
    assert list(job_ids.values()) == [f"{array}_{task}" for task in range(4)]

    # The sweep returned with the jobs queued: status names each job while it is in SLURM.
    listing = hyperp(slurm, "sweep", "status", str(sweep))
    for name, job_id in job_ids.items():
        assert re.search(
            rf"(queued|running|finished) +{re.escape(name)} +job {job_id}", listing.stdout
        )
    shown = subprocess.run(
        ["scontrol", "show", "job", job_ids["width=32"]], env=slurm, capture_output=True, text=True
    ).stdout
    for field in ("TimeLimit=00:10:00", "Requeue=1", "Comment=hyperp-test", "NumCPUs=1"):
        assert field in shown, shown
    assert "ArrayTaskThrottle=2" in shown or "%2" in shown

    runs = wait_until(lambda: settled(sweep, slurm), 300, "the jobs to end", poll_s=2)
    assert {name: run["state"] for name, run in runs.items()} == {
        "width=32": "finished",
        "width=64": "finished",
        "width=96": "finished",
        "width=40": "failed",
    }
    assert {name: run["job_id"] for name, run in runs.items()} == job_ids
    reason = runs["width=40"]["reason"]
    assert reason.startswith("exit status 2: hyperp train: error: model.n_heads (5)"), reason
    for name in ("width=32", "width=64", "width=96"):
        summary = json.loads((out / name / "summary.json").read_text())
        assert summary["steps"] == 24 and summary["width"] == int(name.split("=")[1])

    text = hyperp(slurm, "sweep", "status", str(out)).stdout
    assert f"{out}: 3/4 finished (1 failed, 3 finished)" in text
    assert f"failed      width=40  job {job_ids['width=40']}  (exit status 2: " in text

    again = hyperp(slurm, "sweep", str(sweep), "--launcher", "slurm")
    assert again.returncode == 0, again.stderr
    assert "0 submitted, 4 skipped" in again.stdout
    for name, job_id in job_ids.items():
        assert json.loads((out / name / "launch.json").read_text())["job_id"] == job_id
        assert (out / name / "train.log").read_text().count("# SLURM job ") == 1


def test_a_preempted_job_requeues_resumes_and_ends_with_the_uninterrupted_weights(
    slurm, corpus, tmp_path, jobs_cancelled_after
):
    steps = 480
    sweep = write_sweep(
        tmp_path,
        corpus,
        steps=steps,
        axes='"optim.base_lr" = [0.02]',
        launcher='kind = "slurm"\ncpus_per_task = 1\ntime = 10',
    )
    jobs_cancelled_after.append(sweep)
    run_dir = tmp_path / "runs" / "sweep" / "base_lr=0.02"
    submitted = hyperp(slurm, "sweep", str(sweep))
    assert submitted.returncode == 0, submitted.stderr
    job_id = json.loads((run_dir / "launch.json").read_text())["job_id"]
    # The uninterrupted reference, trained meanwhile on the other core.
    reference = tmp_path / "reference"
    train = ["train", "--config", str(tmp_path / "base.toml"), "--out", str(reference)]
    uninterrupted = subprocess.Popen(
        [sys.executable, "-m", "hyperp", *train, "--optim.base_lr", "0.02"],
        env=slurm,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )

    def last_step() -> int:
        metrics = run_dir / "metrics.jsonl"
        lines = metrics.read_text().splitlines() if metrics.exists() else []
        return json.loads(lines[-1])["step"] if lines else 0

    def log() -> str:
        return (run_dir / "train.log").read_text() if (run_dir / "train.log").exists() else ""

    # 1. The preemption warning (submitit's signal): checkpoint, then requeue by submitit.
    wait_until(lambda: last_step() >= 40, 120, "the job to train")
    subprocess.run(["scancel", "--signal=USR2", job_id], env=slurm, check=True)
    wait_until(lambda: "resumed from" in log(), 120, "the requeued job to resume")
    first_stop = int(re.search(r"stopped at step (\d+)", log()).group(1))
    assert 40 <= first_stop < steps
    # 2. SLURM's own requeue (SIGTERM to the job's processes), once the job trains again.
    wait_until(lambda: last_step() > first_stop + 8, 120, "the resumed job to train")
    assert not (run_dir / "summary.json").exists(), "the run ended before the second preemption"
    subprocess.run(["scontrol", "requeue", job_id], env=slurm, check=True)

    runs = wait_until(lambda: settled(sweep, slurm), 240, "the job to finish", poll_s=1)
    assert runs["base_lr=0.02"]["state"] == "finished" and runs["base_lr=0.02"]["job_id"] == job_id
    text = log()
    assert text.count("# SLURM job ") == 3  # the first start and two requeues, one job id
    stops = set(re.findall(r"stopped at step (\d+)/", text))
    assert len(stops) == 2 and set(re.findall(r"resumed from .* at step (\d+)", text)) == stops
    assert uninterrupted.wait(timeout=300) == 0, uninterrupted.stderr.read()
    weights, step = load_model_weights(run_dir)
    expected, expected_step = load_model_weights(reference)
    assert step == expected_step == steps
    assert weights.keys() == expected.keys()
    for name in weights:
        assert torch.equal(weights[name], expected[name]), name


def test_cancel_interrupts_the_jobs_and_a_rerun_resumes_them(
    slurm, corpus, tmp_path, jobs_cancelled_after
):
    sweep = write_sweep(
        tmp_path,
        corpus,
        steps=4000,
        axes='"optim.base_lr" = [0.02]',
        launcher='kind = "slurm"\ncpus_per_task = 1\ntime = 10',
    )
    jobs_cancelled_after.append(sweep)
    run_dir = tmp_path / "runs" / "sweep" / "base_lr=0.02"
    assert hyperp(slurm, "sweep", str(sweep)).returncode == 0
    first_job = json.loads((run_dir / "launch.json").read_text())["job_id"]
    wait_until(lambda: (run_dir / "metrics.jsonl").exists(), 120, "the job to train")

    cancelled = hyperp(slurm, "sweep", "cancel", str(sweep))
    assert cancelled.returncode == 0, cancelled.stderr
    assert f"cancelled 1 SLURM job(s): {first_job}" in cancelled.stdout
    runs = wait_until(lambda: settled(sweep, slurm), 120, "the job to end", poll_s=1)
    status = runs["base_lr=0.02"]
    assert status["state"] == "interrupted" and status["job_id"] == first_job
    assert status["reason"].startswith("SLURM stopped the job") and "CANCELLED" in status["reason"]
    assert squeue(slurm, first_job).get(first_job) in (None, "CANCELLED")
    # The trainer got SLURM's SIGTERM and saved a checkpoint where it stopped.
    stopped = re.search(r"stopped at step (\d+)/", (run_dir / "train.log").read_text())
    assert stopped, (run_dir / "train.log").read_text()[-2000:]

    resubmitted = hyperp(slurm, "sweep", str(sweep))
    assert "1 submitted" in resubmitted.stdout, resubmitted.stdout + resubmitted.stderr
    second_job = json.loads((run_dir / "launch.json").read_text())["job_id"]
    assert second_job != first_job
    wait_until(
        lambda: "resumed from" in (run_dir / "train.log").read_text(), 120, "the run to resume"
    )
    resumed = re.search(r"resumed from .* at step (\d+)", (run_dir / "train.log").read_text())
    assert resumed.group(1) == stopped.group(1)
    statuses = sweep_status(load_sweep(sweep))
    assert [(s.state, s.job_id) for s in statuses] == [("running", second_job)]
    assert hyperp(slurm, "sweep", "cancel", str(run_dir.parent)).returncode == 0
    wait_until(lambda: settled(sweep, slurm), 120, "the second job to end", poll_s=1)


def _node_count(environment: dict[str, str]) -> int:
    listed = subprocess.run(
        ["sinfo", "--noheader", "--format=%D"], env=environment, capture_output=True, text=True
    )
    return sum(int(count) for count in listed.stdout.split() if count.isdigit())


@pytest.fixture(scope="module")
def two_nodes(slurm) -> dict[str, str]:
    """A cluster of two nodes: the one at hand if it has them, else this machine split in two
    (start-local-slurm.sh with HYPERP_SLURM_NODES=2, beside the one-node cluster)."""
    if _node_count(slurm) >= 2:
        yield slurm
        return
    if os.geteuid() != 0:
        _unavailable("the SLURM at hand has one node and starting a two-node one needs root")
    local = {
        **slurm,
        "HYPERP_SLURM_DIR": "/tmp/hyperp-slurm-two-nodes",
        "HYPERP_SLURM_PORT": "16837",
        "HYPERP_SLURM_NODES": "2",
    }
    started = subprocess.run(
        ["bash", str(START)], env=local, capture_output=True, text=True, timeout=900
    )
    if started.returncode == 3:
        _unavailable(f"a two-node local SLURM cannot be had: {started.stderr.strip()}")
    assert started.returncode == 0, started.stderr
    local["SLURM_CONF"] = re.search(r"export SLURM_CONF=(\S+)", started.stdout).group(1)
    try:
        yield local
    finally:
        subprocess.run(["bash", str(STOP)], env=local, capture_output=True, timeout=120)


def test_a_two_node_run_meets_on_the_first_node_and_survives_preemption(
    two_nodes, corpus, tmp_path, jobs_cancelled_after
):
    sweep = write_sweep(
        tmp_path,
        corpus,
        steps=120,
        axes='"train.nproc" = [2]',
        launcher='kind = "slurm"\nnodes = 2\ncpus_per_task = 1\ntime = 10',
    )
    jobs_cancelled_after.append((sweep, two_nodes))
    run_dir = tmp_path / "runs" / "sweep" / "nproc=2"
    assert hyperp(two_nodes, "sweep", str(sweep)).returncode == 0
    job_id = json.loads((run_dir / "launch.json").read_text())["job_id"]
    metrics = run_dir / "metrics.jsonl"
    wait_until(lambda: metrics.exists() and len(metrics.read_text().splitlines()) > 5, 120, "steps")
    # Every process of the job gets the warning, the ranks included: they must not die of it.
    subprocess.run(["scancel", "--signal=USR2", job_id], env=two_nodes, check=True)
    runs = wait_until(lambda: settled(sweep, two_nodes), 240, "the job to finish", poll_s=1)
    assert runs["nproc=2"]["state"] == "finished", runs
    # One torchrun per node, one rank each, meeting by c10d rendezvous on the first node.
    logs = {path.name: path.read_text() for path in run_dir.glob("train*.log")}
    assert sorted(logs) == ["train.log", "train.node1.log"]
    for text in logs.values():
        assert text.count("--nproc-per-node=1 --nnodes=2 --rdzv-backend=c10d") == 2
        assert f"--rdzv-id={job_id} -m hyperp train" in text
    both = "".join(logs.values())  # the trainer's rank 0 may be on either node
    assert re.search(r"stopped at step \d+/120", both) and "resumed from" in both
    assert json.loads((run_dir / "summary.json").read_text())["processes"] == 2
