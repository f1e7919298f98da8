"""A real tiny sweep: `hyperp sweep` launches `hyperp train` (2 LRs x 2 widths, a few dozen
steps each), then `hyperp fit` reads the run directories. Failure isolation and interruption
are covered with a fake trainer in test_sweep.py, where they are fast and deterministic."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap

import pytest

from support import subprocess_env


def hyperp(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hyperp", *args],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_real_tiny_sweep_then_fit(corpus, tmp_path):
    (tmp_path / "base.toml").write_text(
        textwrap.dedent(
            f"""
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
            steps = 16
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
    )
    (tmp_path / "sweep.toml").write_text(
        'base = "base.toml"\nworkers = 2\nthreads_per_worker = 1\n'
        '[axes]\n"optim.lr" = [0.01, 0.05]\n"model.width" = [32, 64]\n'
    )
    sweep_file = str(tmp_path / "sweep.toml")
    out = tmp_path / "runs" / "sweep"

    first = hyperp("sweep", sweep_file)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "4 finished now, 0 skipped, 0 failed" in first.stdout
    names = sorted(path.parent.name for path in out.glob("*/summary.json"))
    assert names == ["lr=0.01_width=32", "lr=0.01_width=64", "lr=0.05_width=32", "lr=0.05_width=64"]
    summary = json.loads((out / "lr=0.05_width=64" / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["steps"] == 16
    assert summary["width"] == 64 and summary["lr"] == pytest.approx(0.05)
    assert math.isfinite(summary["val_loss"]) and summary["flops"] > 0

    # Starting the sweep again redoes nothing: no run is launched a second time.
    again = hyperp("sweep", sweep_file)
    assert again.returncode == 0 and "0 finished now, 4 skipped, 0 failed" in again.stdout
    for name in names:
        assert (out / name / "train.log").read_text().count("$ ") == 1
    status = hyperp("sweep", "status", str(out))
    assert f"{out}: 4/4 finished" in status.stdout

    report = tmp_path / "report"
    fitted = hyperp("fit", str(out), "--scale-axis", "width", "--report", str(report), "--json")
    assert fitted.returncode == 0, fitted.stderr
    result = json.loads(fitted.stdout)
    assert result["n_records"] == 4 and result["group_by"] == ["width"]
    for group in result["groups"]:
        assert group["x"] == [0.01, 0.05]
        # Two LRs per width: the fit says what is missing instead of inventing an optimum.
        assert "at least 3 distinct learning rates" in group["error"]
    (curve,) = result["loss_vs_compute"]
    assert curve["method"] == "hyperp" and curve["preferred"] == "power"
    assert (report / "lr_sweeps.png").exists() and (report / "loss_vs_flops.png").exists()
