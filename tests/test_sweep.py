"""`hyperp sweep`: expansion, names, the worker pool, failures, interruption and resumption.

The trainer is replaced by a small script that follows the run-directory contract (it writes
config.json, metrics.jsonl and summary.json), so these tests need no torch.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from hyperp.analysis import load_records
from hyperp.cli import fit as fit_cli
from hyperp.cli import sweep as sweep_cli
from hyperp.sweep import (
    RunSpec,
    command_from_prefix,
    default_train_command,
    expand,
    load_sweep,
    run_name,
    run_sweep,
    sweep_status,
)

SRC = str(Path(__file__).resolve().parents[1] / "src")

FAKE_TRAINER = textwrap.dedent(
    """
    import json, math, os, sys, time
    args = sys.argv[1:]
    assert args[0] == "--config" and args[2] == "--out", args
    out = args[3]
    overrides = dict(zip(args[4::2], args[5::2]))
    name = os.path.basename(out)
    with open(os.environ["FAKE_TRAINER_LOG"], "a") as log:
        log.write(name + "\\n")
    os.makedirs(out, exist_ok=True)
    if name in os.environ.get("FAKE_TRAINER_FAIL", "").split(","):
        print("RuntimeError: forced failure", file=sys.stderr)
        sys.exit(1)
    time.sleep(float(os.environ.get("FAKE_TRAINER_SLEEP", "0")))
    lr = float(overrides["--optim.lr"])
    width = int(overrides["--model.width"])
    steps = int(overrides["--train.steps"])
    config = {"model": {"width": width, "depth": 2}, "optim": {"lr": lr}, "data": {},
              "train": {"steps": steps}}
    loss = 3.5 - 0.2 * math.log(width / 32) + 0.05 * math.log(lr / 0.02) ** 2
    tokens = steps * 1024
    params = 12 * width * width * 2
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f)
    with open(os.path.join(out, "metrics.jsonl"), "w") as f:
        f.write(json.dumps({"step": steps, "tokens": tokens, "loss": loss, "val_loss": loss}) + "\\n")
    summary = {"name": name, "status": "finished", "method": "hyperp", "lr": lr, "base_lr": None,
               "train_loss": loss, "val_loss": loss, "tokens": tokens, "flops": 6 * params * tokens,
               "params": params, "depth": 2, "width": width, "steps": steps,
               "threads": os.environ.get("OMP_NUM_THREADS"), "config": config}
    with open(os.path.join(out, "summary.json.tmp"), "w") as f:
        json.dump(summary, f)
    os.replace(os.path.join(out, "summary.json.tmp"), os.path.join(out, "summary.json"))
    """
)

# A valid trainer config small enough for CPU tests (also read by the fake trainer's runs).
TINY_BASE = textwrap.dedent(
    """
    [model]
    depth = 2
    width = 32
    head_dim = 16
    n_kv_heads = 2
    context = 32
    head_init_rule = "inverse_width"
    base_width = 64

    [data]
    vocab_size = 512

    [train]
    batch_size = 8
    seq_len = 32
    log_every = 4
    eval_every = 8
    eval_batches = 2
    checkpoint_every = 8
    monitor_every = 0
    progress = false
    """
)

SWEEP_FILE = textwrap.dedent(
    """
    base = "base.toml"
    out = "runs/tiny"
    workers = 2

    [set]
    "train.steps" = 30

    [axes]
    "optim.lr" = [0.01, 0.02, 0.04]
    model.width = [32, 64]
    """
)

# Run the verb in a fresh interpreter, registering only the sweep verb.
SWEEP_MAIN = (
    "import argparse, sys\n"
    "from hyperp.cli import sweep\n"
    "p = argparse.ArgumentParser(prog='hyperp')\n"
    "sub = p.add_subparsers(dest='verb', required=True)\n"
    "sweep.register(sub)\n"
    "a = p.parse_args(['sweep', *sys.argv[1:]])\n"
    "sys.exit(a.func(a))\n"
)


@pytest.fixture
def project(tmp_path):
    (tmp_path / "base.toml").write_text(TINY_BASE)
    (tmp_path / "sweep.toml").write_text(SWEEP_FILE)
    trainer = tmp_path / "fake_trainer.py"
    trainer.write_text(FAKE_TRAINER)
    log = tmp_path / "launches.log"
    log.touch()
    env = {
        **os.environ,
        "PYTHONPATH": SRC,
        "FAKE_TRAINER_LOG": str(log),
        "FAKE_TRAINER_SLEEP": "0",
        "FAKE_TRAINER_FAIL": "",
    }
    return tmp_path, trainer, log, env


def sweep_subprocess(project_dir: Path, trainer: Path, env: dict, *extra: str, **popen):
    command = [
        sys.executable,
        "-c",
        SWEEP_MAIN,
        str(project_dir / "sweep.toml"),
        "--train-command",
        f"{sys.executable} {trainer}",
        *extra,
    ]
    return subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen
    )


def run_verb(module, verb: str, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="hyperp")
    sub = parser.add_subparsers(dest="verb", required=True)
    module.register(sub)
    args = parser.parse_args([verb, *argv])
    return args.func(args)


def launches(log: Path) -> list[str]:
    return log.read_text().split()


def test_expansion_names_and_settings(project):
    project_dir, _, _, _ = project
    spec = load_sweep(project_dir / "sweep.toml")
    runs = expand(spec)
    assert [run.name for run in runs] == [
        "lr=0.01_width=32",
        "lr=0.01_width=64",
        "lr=0.02_width=32",
        "lr=0.02_width=64",
        "lr=0.04_width=32",
        "lr=0.04_width=64",
    ]
    assert runs[0].overrides == {"train.steps": 30, "optim.lr": 0.01, "model.width": 32}
    assert runs[0].directory == (project_dir / "runs" / "tiny" / runs[0].name).resolve()
    assert [run.name for run in expand(load_sweep(project_dir / "sweep.toml"))] == [
        run.name for run in runs
    ]  # deterministic


def test_log_range_axis_and_name_collisions(tmp_path):
    (tmp_path / "base.toml").write_text("")
    (tmp_path / "s.toml").write_text(
        'base = "base.toml"\n[axes]\n"optim.base_lr" = { log_range = [1e-3, 1e-1], points = 5 }\n'
        '"model.vocab_size" = [600]\n"data.vocab_size" = [512]\n'
    )
    runs = expand(load_sweep(tmp_path / "s.toml"))
    assert [run.overrides["optim.base_lr"] for run in runs] == [
        0.001,
        0.00316228,
        0.01,
        0.0316228,
        0.1,
    ]
    assert runs[1].name == "base_lr=0.00316228_model.vocab_size=600_data.vocab_size=512"
    assert run_name({"method": "muon", "x.flag": True}) == "method=muon_flag=true"
    # Names round to 6 digits, the trainer gets the exact value, and near-equal values that
    # share a name are told apart by a hash.
    (tmp_path / "s.toml").write_text(
        'base = "base.toml"\n[axes]\n"optim.lr" = [0.0123456789, 0.01234568]\n'
    )
    close = expand(load_sweep(tmp_path / "s.toml"))
    assert close[0].name == "lr=0.0123457" and close[1].name.startswith("lr=0.0123457_")
    assert "0.0123456789" in default_train_command(close[0], tmp_path / "base.toml")


def test_sweep_file_mistakes_name_the_fix(tmp_path):
    (tmp_path / "base.toml").write_text("")
    cases = {
        'base = "base.toml"\nlr = [1]\n': "unknown key",
        '[axes]\n"optim.lr" = [1]\n': "name the base training config",
        'base = "missing.toml"\n': "does not exist",
        'base = "base.toml"\n[axes]\n"optim.lr" = []\n': "has no values",
        'base = "base.toml"\n[axes]\n"optim.lr" = { log_range = [0, 1], points = 3 }\n': "positive",
        'base = "base.toml"\n[set]\n"a.b" = 1\n[axes]\n"a.b" = [1, 2]\n': r"both in \[set\] and in \[axes\]",
    }
    for text, message in cases.items():
        (tmp_path / "bad.toml").write_text(text)
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            load_sweep(tmp_path / "bad.toml")


def test_torchrun_when_a_run_asks_for_several_processes(tmp_path):
    base = tmp_path / "base.toml"
    single = RunSpec("a", tmp_path / "a", {"optim.lr": 0.01}, {"optim.lr": 0.01}, nproc=1)
    multi = RunSpec("b", tmp_path / "b", {"train.nproc": 4}, {}, nproc=4)
    assert default_train_command(single, base)[:4] == [sys.executable, "-m", "hyperp", "train"]
    assert default_train_command(single, base)[4:] == [
        "--config", str(base), "--out", str(tmp_path / "a"), "--optim.lr", "0.01",
    ]  # fmt: skip
    command = default_train_command(multi, base)
    assert command[:7] == [
        "torchrun",
        "--standalone",
        "--nproc-per-node",
        "4",
        "-m",
        "hyperp",
        "train",
    ]
    base.write_text("[train]\nnproc = 2\n")
    (tmp_path / "s.toml").write_text('base = "base.toml"\n[axes]\n"optim.lr" = [0.1]\n')
    assert expand(load_sweep(tmp_path / "s.toml"))[0].nproc == 2


def test_tiny_sweep_end_to_end_then_fit(project, capsys, monkeypatch):
    project_dir, trainer, log, env = project
    for key in ("FAKE_TRAINER_LOG", "FAKE_TRAINER_SLEEP", "FAKE_TRAINER_FAIL"):
        monkeypatch.setenv(key, env[key])
    code = run_verb(
        sweep_cli,
        "sweep",
        [
            str(project_dir / "sweep.toml"),
            "--train-command",
            f"{sys.executable} {trainer}",
            "--threads-per-worker",
            "1",
        ],
    )
    assert code == 0
    assert "6 finished now, 0 skipped, 0 failed" in capsys.readouterr().out
    assert sorted(launches(log)) == sorted(
        run.name for run in expand(load_sweep(project_dir / "sweep.toml"))
    )
    out = project_dir / "runs" / "tiny"
    summary = json.loads((out / "lr=0.02_width=64" / "summary.json").read_text())
    assert summary["threads"] == "1"
    assert (out / "lr=0.02_width=64" / "train.log").exists()
    assert [s.state for s in sweep_status(load_sweep(project_dir / "sweep.toml"))] == [
        "finished"
    ] * 6

    assert (
        run_verb(fit_cli, "fit", [str(out), "--scale-axis", "width", "--json", "--bootstrap", "50"])
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["group_by"] == ["width"]
    optima = [group["optimum"]["lr"] for group in result["groups"]]
    assert optima == pytest.approx([0.02, 0.02], rel=1e-6)  # the fake loss is quadratic in ln lr
    (law,) = result["power_laws"]
    assert law["fit"]["exponent"] == pytest.approx(0.0, abs=1e-6)  # LR transfers across width


def test_failed_run_is_recorded_and_the_others_complete(project):
    project_dir, trainer, log, env = project
    env["FAKE_TRAINER_FAIL"] = "lr=0.02_width=32"
    process = sweep_subprocess(project_dir, trainer, env)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 1, stderr
    assert "5 finished now, 0 skipped, 1 failed" in stdout
    assert "failed: lr=0.02_width=32: exit status 1: RuntimeError: forced failure" in stdout
    failed_dir = project_dir / "runs" / "tiny" / "lr=0.02_width=32"
    error = (failed_dir / "error.txt").read_text()
    assert error.splitlines()[-1] == "exit status 1: RuntimeError: forced failure"
    assert "--- last lines of train.log ---" in error
    statuses = {s.name: s for s in sweep_status(load_sweep(project_dir / "sweep.toml"))}
    assert statuses["lr=0.02_width=32"].state == "failed"
    assert sum(s.state == "finished" for s in statuses.values()) == 5
    # The sweep directory alone is enough for status, and hyperp fit lists the failure.
    from_directory = sweep_status(load_sweep(project_dir / "runs" / "tiny"))
    assert {s.name: s.state for s in from_directory} == {n: s.state for n, s in statuses.items()}
    loaded = load_records([project_dir / "runs" / "tiny"])
    assert len(loaded.records) == 5
    assert [f.error for f in loaded.failed] == ["exit status 1: RuntimeError: forced failure"]

    # A second invocation skips finished and failed runs; --retry-failed reruns only the failure.
    process = sweep_subprocess(project_dir, trainer, env)
    stdout, _ = process.communicate(timeout=120)
    assert "0 finished now, 6 skipped, 0 failed" in stdout
    env["FAKE_TRAINER_FAIL"] = ""
    process = sweep_subprocess(project_dir, trainer, env, "--retry-failed")
    stdout, _ = process.communicate(timeout=120)
    assert process.returncode == 0 and "1 finished now, 5 skipped" in stdout
    assert launches(log).count("lr=0.02_width=32") == 2
    assert len(launches(log)) == 7

    loaded = load_records([project_dir / "runs" / "tiny"])
    assert len(loaded.records) == 6 and not loaded.failed


def test_interrupted_sweep_resumes_without_redoing_finished_runs(project):
    project_dir, trainer, log, env = project
    env["FAKE_TRAINER_SLEEP"] = "0.4"
    out = project_dir / "runs" / "tiny"
    process = sweep_subprocess(project_dir, trainer, env, "--workers", "1")
    deadline = time.monotonic() + 60
    while len(list(out.glob("*/summary.json"))) < 2:
        assert time.monotonic() < deadline, "the sweep made no progress"
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "interrupted; run again to resume" in stdout
    finished_before = {path.parent.name for path in out.glob("*/summary.json")}
    assert 2 <= len(finished_before) < 6
    launched_before = launches(log)

    process = sweep_subprocess(project_dir, trainer, env, "--workers", "2")
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    assert f"{len(finished_before)} skipped" in stdout
    assert len(list(out.glob("*/summary.json"))) == 6
    relaunched = launches(log)[len(launched_before) :]
    assert not finished_before & set(relaunched)  # nothing finished was redone
    assert set(relaunched) | finished_before == {
        run.name for run in expand(load_sweep(project_dir / "sweep.toml"))
    }


def test_dry_run_and_status_list_every_run(project, capsys):
    project_dir, _, _, _ = project
    sweep_file = str(project_dir / "sweep.toml")
    assert run_verb(sweep_cli, "sweep", [sweep_file, "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("6 run(s) into")
    for run in expand(load_sweep(project_dir / "sweep.toml")):
        assert f"  {run.name}  [run, pending]" in text
    assert not (project_dir / "runs").exists()  # a dry run starts nothing

    assert run_verb(sweep_cli, "sweep", ["status", sweep_file, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["counts"] == {"pending": 6}
    with pytest.raises(Exception, match="usage: hyperp sweep status"):
        run_verb(sweep_cli, "sweep", ["status"])


def test_dry_run_reports_lr_tokens_flops_of_each_run(project, capsys):
    pytest.importorskip("hyperp.train.config")
    project_dir, _, _, _ = project
    sweep_file = str(project_dir / "sweep.toml")
    assert run_verb(sweep_cli, "sweep", [sweep_file, "--dry-run", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["runs"]
    assert len(rows) == 6
    for row in rows:
        plan = row["plan"]
        assert isinstance(plan, dict), plan
        assert plan["lr"] == pytest.approx(row["overrides"]["optim.lr"])  # optim.lr given directly
        assert plan["steps"] == 30 and plan["tokens"] == 30 * 8 * 32
        assert math.isfinite(plan["flops"]) and plan["flops"] > 0
    flops = {row["overrides"]["model.width"]: row["plan"]["flops"] for row in rows}
    assert flops[64] > flops[32]
    assert run_verb(sweep_cli, "sweep", [sweep_file, "--dry-run"]) == 0
    assert "lr=0.01, tokens=7680, steps=30, flops=" in capsys.readouterr().out

    # A run whose settings the trainer would refuse makes the dry run fail, naming the problem.
    (project_dir / "sweep.toml").write_text(SWEEP_FILE.replace("[32, 64]", "[32, 40]"))
    assert run_verb(sweep_cli, "sweep", [sweep_file, "--dry-run"]) == 1
    text = capsys.readouterr().out
    assert "lr=0.01_width=40  [run, pending]  config error:" in text
    assert "3 run(s) have config errors" in text


def test_a_trainer_that_cannot_start_is_a_recorded_failure(project):
    project_dir, _, _, _ = project
    spec = load_sweep(project_dir / "sweep.toml")
    result = run_sweep(
        spec, workers=1, train_command=command_from_prefix(str(project_dir / "no-such-trainer"))
    )
    assert len(result.failed) == 6 and not result.finished
    assert all(error.startswith("could not start") for error in result.failed.values())
    assert {s.state for s in sweep_status(spec)} == {"failed"}
    with pytest.raises(ValueError, match="empty"):
        command_from_prefix("")
