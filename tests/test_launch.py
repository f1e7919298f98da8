"""Launching: srun without torchrun, ranks that see different run directories, one trainer per
run directory, the dry run's plan, and what a run prints when nobody watches a terminal."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from hyperp.train.distributed import launch_environment
from hyperp.train.trainer import train
from support import subprocess_env
from training import PIN_FP32, assert_equal_up_to_rounding, cli_args, config, run_cli


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_ranks(corpus, outs, env_of, **overrides):
    """One ``hyperp train`` process per rank, each with its own environment and --out."""
    processes = []
    for rank, out in enumerate(outs):
        args = cli_args(corpus, out, **{"train.threads": 1, **overrides})
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "hyperp", "train", *args],
                env=subprocess_env(OMP_NUM_THREADS="1", **env_of(rank)),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    return [(p.communicate(timeout=600)[0], p.returncode) for p in processes]


def test_srun_variables_are_read():
    env = {
        "SLURM_STEP_ID": "0",
        "SLURM_STEP_NUM_TASKS": "8",
        "SLURM_PROCID": "5",
        "SLURM_LOCALID": "1",
        "SLURM_JOB_ID": "123456",
        "SLURM_STEP_NODELIST": "gpu[017-020,031],login1",
    }
    found = launch_environment(env)
    assert found == {
        "RANK": "5",
        "WORLD_SIZE": "8",
        "LOCAL_RANK": "1",
        "MASTER_ADDR": "gpu017",
        "MASTER_PORT": str(20000 + 123456 % 20000),
        "LAUNCHER": "srun",
    }
    # torchrun's variables win (srun starting one torchrun per node)
    assert launch_environment({**env, "RANK": "3", "WORLD_SIZE": "16"})["LAUNCHER"] == "torchrun"
    # a batch script, or srun with one task: one process
    assert launch_environment({"SLURM_NTASKS": "8", "SLURM_PROCID": "0"}) is None
    assert launch_environment({**env, "SLURM_STEP_NUM_TASKS": "1"}) is None
    with pytest.raises(ValueError, match="SLURM_PROCID is not set"):
        launch_environment({k: v for k, v in env.items() if k != "SLURM_PROCID"})
    with pytest.raises(ValueError, match="SLURM_PROCID 9 is outside 0..7"):
        launch_environment({**env, "SLURM_PROCID": "9"})
    with pytest.raises(ValueError, match="export MASTER_ADDR"):
        launch_environment({k: v for k, v in env.items() if k != "SLURM_STEP_NODELIST"})


@pytest.mark.distributed
def test_srun_without_torchrun_forms_one_job(corpus, tmp_path):
    # Two tasks as srun starts them: SLURM's variables only, no torchrun.
    port = str(free_port())

    def slurm_task(rank):
        return {
            "SLURM_STEP_ID": "0",
            "SLURM_STEP_NUM_TASKS": "2",
            "SLURM_PROCID": str(rank),
            "SLURM_LOCALID": str(rank),
            "SLURM_JOB_ID": "77",
            "SLURM_JOB_NODELIST": "localhost",
            "MASTER_PORT": port,
        }

    run = tmp_path / "srun"
    settings = {**PIN_FP32, "train.distributed": "ddp"}
    results = start_ranks(corpus, [run, run], slurm_task, **settings)
    for output, code in results:
        assert code == 0, output
    single = tmp_path / "single"
    train(config(corpus, **settings), single)
    assert_equal_up_to_rounding(single, run, "fp32")


@pytest.mark.distributed
def test_ranks_that_see_different_run_directories_stop(corpus, tmp_path):
    port = str(free_port())

    def rank_env(rank):
        return {
            "RANK": str(rank),
            "WORLD_SIZE": "2",
            "LOCAL_RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
            "HYPERP_SHARED_FS_TIMEOUT": "2",
        }

    outs = [tmp_path / "a", tmp_path / "b"]
    results = start_ranks(corpus, outs, rank_env)
    for output, code in results:
        assert code == 2, output
        assert "rank(s) [1] do not see the run directory" in output
        assert "Traceback" not in output
    assert not (outs[0] / "metrics.jsonl").exists()


def test_one_run_directory_one_trainer(corpus, tmp_path):
    run = tmp_path / "run"
    overrides = {"train.steps": 400, "train.checkpoint_every": 50}
    first = run_cli(cli_args(corpus, run, **overrides))
    deadline = time.time() + 120
    while not (run / "metrics.jsonl").exists() and time.time() < deadline:
        assert first.poll() is None, first.stdout.read()
        time.sleep(0.05)
    second = run_cli(cli_args(corpus, run, **overrides))
    output, _ = second.communicate(timeout=120)
    assert second.returncode == 2, output
    assert f"is in use by another trainer (pid {first.pid} on {socket.gethostname()}" in output
    first.send_signal(signal.SIGKILL)  # its lock goes with it
    first.wait()
    third = run_cli(cli_args(corpus, run, **overrides))
    lines = []
    for line in third.stdout:  # the takeover is announced before training resumes
        lines.append(line)
        if "taking over" in line:
            break
    third.kill()
    third.wait()
    output = "".join(lines)
    assert "in use by another trainer" not in output
    assert f"taking over {run / 'trainer.lock'} from a trainer that is gone (pid {first.pid}" in (
        output
    )


def test_dry_run_prints_the_plan_the_run_starts_with(corpus, tmp_path):
    args = cli_args(corpus, tmp_path / "run")
    dry = subprocess.run(
        [sys.executable, "-m", "hyperp", "train", *args, "--dry-run"],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dry.returncode == 0, dry.stderr
    assert "vocabulary 512" in dry.stdout  # the corpus's, not a default
    real = run_cli(args)
    output, _ = real.communicate(timeout=300)
    assert real.returncode == 0, output
    plan_lines = dry.stdout.splitlines()[:4]
    log_lines = (tmp_path / "run" / "train.log").read_text().splitlines()
    assert log_lines[:4] == plan_lines


def test_a_run_without_a_terminal_prints_step_lines(corpus, tmp_path):
    run = tmp_path / "run"
    process = run_cli(cli_args(corpus, run, **{"train.log_every": 2}))  # stdout is a pipe
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    steps = [line for line in output.splitlines() if line.startswith("step ")]
    assert [line.split(" | ")[0] for line in steps] == [f"step {s}/8" for s in (1, 2, 4, 6, 8)]
    assert all(" | loss " in line and " | eta " in line for line in steps)
    assert " | val " in steps[-1]
    log = (run / "train.log").read_text()
    assert all(line in log for line in steps) and "finished:" in log
    assert os.path.getsize(run / "train.log") > 0
