"""Local sweeps survive kills: a trainer killed after a checkpoint is interrupted and resumed; a
failure quotes its real cause; stopping a sweep stops torchrun's ranks; a sweep killed with
SIGKILL takes its trainers (and torchrun's ranks) with it, and the next one resumes them;
processes that outlive a killed sweep anyway are waited for (never started twice) or
cancelled."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from hyperp.sweep import command_from_prefix, load_sweep, run_sweep, sweep_status
from hyperp.sweep.processes import process_start, process_tree
from hyperp.train.checkpoint import list_checkpoints
from support import subprocess_env

# A stand-in trainer: its behaviour is chosen by FAKE_MODE; it logs each start to FAKE_LOG.
FAKE_TRAINER = textwrap.dedent(
    """
    import json, os, signal, sys, time
    if os.environ.get("FAKE_OUTLIVE"):  # outlives its sweep: drops the parent-death signal
        import ctypes
        ctypes.CDLL(None).prctl(1, 0, 0, 0, 0)  # PR_SET_PDEATHSIG, none
    out = sys.argv[sys.argv.index("--out") + 1]
    os.makedirs(out, exist_ok=True)
    with open(os.environ["FAKE_LOG"], "a") as log:
        log.write(os.path.basename(out) + "\\n")
    mode = os.environ["FAKE_MODE"]
    print("model: depth 2, width 32", flush=True)
    if mode == "traceback":
        print("Traceback (most recent call last):", flush=True)
        print('  File "train.py", line 1, in <module>', flush=True)
        print("RuntimeError: the loss is NaN at step 3", flush=True)
        print("schedule: linear decay to 0.1 x peak", flush=True)
        sys.exit(1)
    if mode in ("SIGKILL", "SIGSEGV"):
        os.kill(os.getpid(), getattr(signal, mode))
    time.sleep(float(os.environ.get("FAKE_SLEEP", "0")))
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump({"status": "finished"}, f)
    """
)

# torchrun's ranks: each records its pid, then ignores SIGTERM, as a rank stuck in a collective
# or in a long checkpoint save would.
STUCK_RANK = textwrap.dedent(
    """
    import os, signal, sys, time
    out = sys.argv[sys.argv.index("--out") + 1]
    os.makedirs(out, exist_ok=True)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with open(os.path.join(out, "rank%s.pid" % os.environ["RANK"]), "w") as f:
        f.write(str(os.getpid()))
    while True:
        time.sleep(0.1)
    """
)

# A sweep with a short stop grace, so the test does not wait a minute for the SIGKILL.
SWEEP_WITH_GRACE = textwrap.dedent(
    """
    import sys
    from hyperp.sweep import command_from_prefix, load_sweep, run_sweep
    spec = load_sweep(sys.argv[1])
    result = run_sweep(spec, train_command=command_from_prefix(sys.argv[2]), stop_grace_s=3.0)
    sys.exit(130 if result.interrupted else 0)
    """
)


@pytest.fixture
def fake(tmp_path):
    (tmp_path / "base.toml").write_text("")
    (tmp_path / "trainer.py").write_text(FAKE_TRAINER)
    log = tmp_path / "launches.log"
    log.touch()
    environment = subprocess_env(FAKE_LOG=str(log), FAKE_MODE="finish")
    return tmp_path, f"{sys.executable} {tmp_path / 'trainer.py'}", log, environment


def write_sweep(directory: Path, axis: str) -> Path:
    sweep = directory / "sweep.toml"
    sweep.write_text(f'base = "base.toml"\nworkers = 2\n[axes]\n{axis}\n')
    return sweep


def sweep_command(sweep: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "hyperp", "sweep", str(sweep), *extra]


def wait_until(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


def running_pids(out: Path, names: list[str]) -> dict[str, int] | None:
    markers = [out / name / ".running" for name in names]
    if not all(marker.exists() for marker in markers):
        return None
    return {name: json.loads(marker.read_text())["pid"] for name, marker in zip(names, markers)}


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        # The last line of the log is unrelated; the reason quotes the exception.
        ("traceback", "exit status 1: RuntimeError: the loss is NaN at step 3"),
        ("SIGKILL", "killed by SIGKILL before its first checkpoint (no error message in"),
        ("SIGSEGV", "killed by SIGSEGV (no error message in train.log)"),
    ],
)
def test_a_failure_quotes_the_exit_status_or_signal_and_the_last_error_line(
    fake, monkeypatch, mode, reason
):
    directory, trainer, _, environment = fake
    monkeypatch.setenv("FAKE_LOG", environment["FAKE_LOG"])
    monkeypatch.setenv("FAKE_MODE", mode)
    spec = load_sweep(write_sweep(directory, '"optim.lr" = [0.01]'))
    result = run_sweep(spec, train_command=command_from_prefix(trainer))
    assert list(result.failed) == ["lr=0.01"] and result.failed["lr=0.01"].startswith(reason)
    error = (spec.out / "lr=0.01" / "error.txt").read_text().splitlines()
    assert error[0] == "--- last lines of train.log ---" and error[-1].startswith(reason)
    (status,) = sweep_status(spec)
    assert (status.state, status.reason) == ("failed", error[-1])


def write_base(tmp_path: Path, corpus: Path) -> None:
    """A tiny real run (3000 steps, a checkpoint every 10) as the sweep's base."""
    (tmp_path / "base.toml").write_text(
        textwrap.dedent(
            f"""
            [model]
            depth = 2
            width = 32
            head_dim = 16
            n_kv_heads = 2
            context = 32
            [data]
            path = "{corpus}"
            [train]
            steps = 3000
            batch_size = 8
            seq_len = 32
            log_every = 10
            eval_every = 0
            checkpoint_every = 10
            monitor_every = 0
            progress = false
            threads = 1
            """
        )
    )


def test_a_trainer_killed_after_a_checkpoint_is_interrupted_and_the_next_sweep_resumes_it(
    corpus, tmp_path
):
    write_base(tmp_path, corpus)
    sweep = write_sweep(tmp_path, '"optim.base_lr" = [0.02]')
    run_dir = tmp_path / "runs" / "sweep" / "base_lr=0.02"
    process = subprocess.Popen(
        sweep_command(sweep), env=subprocess_env(), stdout=subprocess.PIPE, text=True
    )
    wait_until(lambda: list_checkpoints(run_dir / "checkpoints"), 120, "a checkpoint")
    (trainer,) = running_pids(run_dir.parent, [run_dir.name]).values()
    os.kill(trainer, signal.SIGKILL)  # as the OOM killer would
    stdout, _ = process.communicate(timeout=120)
    assert process.returncode == 1
    assert "0 finished now, 0 skipped, 0 failed, 1 interrupted" in stdout
    stopped = re.search(r"killed by SIGKILL after the checkpoint of step (\d+)", stdout)
    assert stopped and int(stopped.group(1)) % 10 == 0, stdout
    (status,) = sweep_status(load_sweep(sweep))
    assert status.state == "interrupted" and status.reason.startswith("killed by SIGKILL after")
    assert not (run_dir / "error.txt").exists()

    # The next sweep resumes it from that checkpoint (then is stopped: the rest is the
    # trainer's resume guarantee, tested with the trainer).
    resumed = subprocess.Popen(
        sweep_command(sweep), env=subprocess_env(), stdout=subprocess.PIPE, text=True
    )
    wait_until(lambda: "resumed from" in (run_dir / "train.log").read_text(), 120, "a resume")
    resumed.send_signal(signal.SIGTERM)
    stdout, _ = resumed.communicate(timeout=120)
    assert resumed.returncode == 130 and "interrupted; run again to resume" in stdout
    log = (run_dir / "train.log").read_text()
    assert re.search(rf"resumed from .* at step {stopped.group(1)}\b", log)
    (status,) = sweep_status(load_sweep(sweep))
    assert (status.state, status.reason) == ("interrupted", "the sweep was stopped")


def test_stopping_a_sweep_stops_torchruns_ranks(fake, tmp_path):
    directory, _, _, environment = fake
    (directory / "rank.py").write_text(STUCK_RANK)
    torchrun = f"{sys.executable} -m torch.distributed.run --standalone --nproc-per-node 2"
    sweep = write_sweep(directory, '"optim.lr" = [0.01]')
    run_dir = directory / "runs" / "sweep" / "lr=0.01"
    process = subprocess.Popen(
        [sys.executable, "-c", SWEEP_WITH_GRACE, str(sweep), f"{torchrun} {directory / 'rank.py'}"],
        env=environment,
    )
    pids: list[int] = []
    try:
        wait_until(
            lambda: all((run_dir / f"rank{rank}.pid").exists() for rank in (0, 1)),
            120,
            "both ranks",
        )
        time.sleep(0.2)
        pids = [int((run_dir / f"rank{rank}.pid").read_text()) for rank in (0, 1)]
        assert all(process_start(pid) for pid in pids)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 130
        # Each rank runs in its own session: stopping torchrun's process group misses them.
        wait_until(lambda: not any(process_start(pid) for pid in pids), 10, "the ranks to end")
        (status,) = sweep_status(load_sweep(sweep))
        assert (status.state, status.reason) == ("interrupted", "the sweep was stopped")
    finally:
        process.kill()
        for pid in pids:
            if process_start(pid):
                os.kill(pid, signal.SIGKILL)


def test_runs_left_behind_by_a_killed_sweep_are_waited_for_not_started_twice(fake):
    directory, trainer, log, environment = fake
    environment["FAKE_SLEEP"] = "15"  # outlasts the next sweep's start on a loaded machine
    environment["FAKE_OUTLIVE"] = "1"
    sweep = write_sweep(directory, '"optim.lr" = [0.01, 0.02]')
    out = directory / "runs" / "sweep"
    names = ["lr=0.01", "lr=0.02"]
    first = subprocess.Popen(sweep_command(sweep, "--train-command", trainer), env=environment)
    left = wait_until(lambda: running_pids(out, names), 60, "both runs to start")
    wait_until(lambda: len(log.read_text().split()) == 2, 60, "both trainers to start")
    first.kill()  # SIGKILL: the trainers live on
    first.wait()
    assert all(process_start(pid) for pid in left.values())

    again = subprocess.run(
        sweep_command(sweep, "--train-command", trainer),
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 0, again.stderr
    assert "2 finished now, 0 skipped, 0 failed" in again.stdout
    assert sorted(log.read_text().split()) == names  # each run started once
    assert all((out / name / "summary.json").exists() for name in names)
    assert not any(process_start(pid) for pid in left.values())


def test_cancel_stops_runs_left_behind_by_a_killed_sweep(fake):
    directory, trainer, log, environment = fake
    environment["FAKE_SLEEP"] = "120"
    environment["FAKE_OUTLIVE"] = "1"
    sweep = write_sweep(directory, '"optim.lr" = [0.01, 0.02]')
    out = directory / "runs" / "sweep"
    names = ["lr=0.01", "lr=0.02"]
    first = subprocess.Popen(sweep_command(sweep, "--train-command", trainer), env=environment)
    left = wait_until(lambda: running_pids(out, names), 60, "both runs to start")
    wait_until(lambda: len(log.read_text().split()) == 2, 60, "both trainers to start")
    first.kill()
    first.wait()
    try:
        statuses = sweep_status(load_sweep(sweep))
        assert [(s.state, s.reason) for s in statuses] == [
            ("running", f"pid {left[name]}") for name in names
        ]
        cancelled = subprocess.run(
            [sys.executable, "-m", "hyperp", "sweep", "cancel", str(out)],
            env=environment,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert cancelled.returncode == 0, cancelled.stderr
        assert f"stopped 2 local run(s): {' '.join(names)}" in cancelled.stdout
        assert not any(process_start(pid) for pid in left.values())
        assert {s.state for s in sweep_status(load_sweep(sweep))} == {"interrupted"}
    finally:
        for pid in left.values():
            if process_start(pid):
                os.kill(pid, signal.SIGKILL)


def _kill_the_sweep_then_resume(sweep: Path, out: Path, killed: list[str], finished: list[str]):
    """SIGKILL a sweep once the ``killed`` runs have a checkpoint and the ``finished`` ones are
    done: within seconds no process of it is left; the next sweep resumes the killed runs from
    their checkpoints and starts no finished run again."""
    # torchrun from this interpreter's environment, whether or not it is activated
    environment = subprocess_env(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    )
    process = subprocess.Popen(sweep_command(sweep), env=environment, stdout=subprocess.PIPE)
    children: dict[int, str] = {}
    try:
        wait_until(lambda: all((out / n / "summary.json").exists() for n in finished), 300, "runs")
        for name in killed:
            checkpoints = out / name / "checkpoints"
            wait_until(lambda c=checkpoints: list_checkpoints(c), 300, "a checkpoint")
        tops = running_pids(out, killed)
        assert tops, "the killed runs should be running"
        for pid in tops.values():
            children.update(process_tree(pid))
        process.kill()
        process.wait()
        moment = time.monotonic()
        wait_until(
            lambda: all(process_start(pid) != start for pid, start in children.items()),
            30,
            "the sweep's processes to end",
        )
        print(f"{len(children)} processes ended {time.monotonic() - moment:.1f} s after the kill")
    finally:
        process.kill()
        for pid, start in children.items():
            if process_start(pid) == start:
                os.kill(pid, signal.SIGKILL)
    saved = {name: list_checkpoints(out / name / "checkpoints")[-1][0] for name in killed}
    summaries = {name: (out / name / "summary.json").stat().st_mtime_ns for name in finished}
    resumed = subprocess.Popen(sweep_command(sweep), env=environment, stdout=subprocess.PIPE)
    try:
        for name in killed:
            log = out / name / "train.log"
            wait_until(lambda log=log: "resumed from" in log.read_text(), 300, "a resume")
            assert re.search(rf"resumed from .* at step {saved[name]}\b", log.read_text())
    finally:
        resumed.send_signal(signal.SIGTERM)
        resumed.communicate(timeout=120)
    for name in finished:  # never started again
        assert (out / name / "summary.json").stat().st_mtime_ns == summaries[name]
        assert (out / name / "train.log").read_text().count("$ ") == 1


def test_a_sigkilled_sweep_takes_its_trainings_with_it_and_the_rerun_resumes_them(corpus, tmp_path):
    write_base(tmp_path, corpus)
    sweep = write_sweep(tmp_path, '"train.steps" = [20, 3000]')
    out = tmp_path / "runs" / "sweep"
    _kill_the_sweep_then_resume(sweep, out, killed=["steps=3000"], finished=["steps=20"])


@pytest.mark.distributed
def test_a_sigkilled_sweep_takes_torchruns_ranks_with_it(corpus, tmp_path):
    write_base(tmp_path, corpus)
    sweep = tmp_path / "sweep.toml"
    sweep.write_text(
        'base = "base.toml"\nworkers = 1\n[set]\n"train.nproc" = 2\n'
        '"train.distributed" = "ddp"\n[axes]\n"optim.base_lr" = [0.02]\n'
    )
    out = tmp_path / "runs" / "sweep"
    _kill_the_sweep_then_resume(sweep, out, killed=["base_lr=0.02"], finished=[])
