"""`hyperp reproduce`: the verdicts follow the fitted numbers (synthetic run directories, no
training), and a smoke-size run goes end to end through sweeps, fits and the report."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from hyperp.cli.reproduce import _settings
from hyperp.data import prepare
from hyperp.reproduce import (
    STUDIES,
    THRESHOLDS,
    ReproduceOptions,
    analyze_width,
    read_points,
)
from support import subprocess_env

ROOT = Path(__file__).resolve().parents[1]
STUDIES_DIR = ROOT / "studies"


def _fake_run(directory: Path, overrides: dict, loss: float | None, **summary) -> None:
    """A run directory as `hyperp sweep` + `hyperp train` leave it (loss None: diverged)."""
    directory.mkdir(parents=True)
    (directory / "launch.json").write_text(json.dumps({"overrides": overrides}))
    if loss is None:
        (directory / "error.txt").write_text("TrainingDiverged: the loss became nan\n")
        return
    config = {"model": {}, "optim": {}, "train": {}}
    (directory / "summary.json").write_text(
        json.dumps(
            {"val_loss": loss, "params": 1000, "tokens": 5000, "wall_time_s": 1.0, **summary}
            | {"config": config}
        )
    )


def _width_runs(out: Path, optimum: dict[str, dict[int, float]]) -> None:
    """Quadratic-in-ln(LR) losses around the given optimum of each variant at each width."""
    grid = [0.0125 * 2 ** (i / 2) for i in range(9)]
    parts = {
        "width_hyperp": [("fixed", "HyperP, fixed head"), ("inverse_width", "HyperP, inverse")],
        "width_muon": [(None, "Muon")],
        "width_adamw": [(None, "AdamW")],
    }
    for stem, variants in parts.items():
        for rule, label in variants:
            for width, best in optimum[label].items():
                for lr in grid:
                    overrides = {"model.width": width, "optim.base_lr": lr}
                    if rule is not None:
                        overrides["model.head_init_rule"] = rule
                    loss = 4.0 + 0.3 * (math.log(lr) - math.log(best)) ** 2
                    name = f"{rule}_{width}_{lr:.6g}"
                    _fake_run(out / stem / name, overrides, loss)


def test_width_verdict_follows_the_fitted_drift(tmp_path):
    optimum = {
        "HyperP, fixed head": {32: 0.12, 64: 0.06, 128: 0.03},  # drifts 4x
        "HyperP, inverse": {32: 0.05, 64: 0.052, 128: 0.054},  # drifts 1.08x
        "Muon": {32: 0.02, 64: 0.03, 128: 0.04},  # drifts 2x
        "AdamW": {32: 0.02, 64: 0.025, 128: 0.03},
    }
    _width_runs(tmp_path / "runs", optimum)
    options = ReproduceOptions(
        size="quick", only=("width",), out=tmp_path / "runs", studies_dir=STUDIES_DIR, run=False
    )
    section = analyze_width(options, tmp_path / "figures")
    drift = section.numbers["drift"]
    assert drift["HyperP, fixed head"] == pytest.approx(4.0, rel=0.02)
    assert drift["Muon"] == pytest.approx(2.0, rel=0.02)
    assert drift["HyperP, inverse-width head"] == pytest.approx(0.054 / 0.05, rel=0.02)
    assert "Claim 1 (HyperP's LR transfers across width, with the inverse-width head): held" in (
        section.verdict
    )
    assert (tmp_path / "figures" / "width.png").stat().st_size > 1000


def test_width_verdict_says_when_hyperp_drifts(tmp_path):
    drifting = {32: 0.02, 64: 0.04, 128: 0.08}
    optimum = {
        "HyperP, fixed head": drifting,
        "HyperP, inverse": drifting,
        "Muon": {32: 0.03, 64: 0.03, 128: 0.03},
        "AdamW": {32: 0.02, 64: 0.02, 128: 0.02},
    }
    _width_runs(tmp_path / "runs", optimum)
    options = ReproduceOptions(
        size="quick", only=("width",), out=tmp_path / "runs", studies_dir=STUDIES_DIR, run=False
    )
    section = analyze_width(options, tmp_path / "figures")
    assert section.numbers["drift"]["HyperP, inverse-width head"] > THRESHOLDS["transfer_drift"]
    assert section.verdict.endswith("did not hold.")


def test_diverged_runs_are_points_without_a_loss(tmp_path):
    _fake_run(tmp_path / "a", {"optim.base_lr": 0.1}, 4.5)
    _fake_run(tmp_path / "b", {"optim.base_lr": 0.4}, None)
    points = sorted(read_points([tmp_path]), key=lambda p: p.value("optim.base_lr"))
    assert [p.value("optim.base_lr") for p in points] == [0.1, 0.4]
    assert points[0].loss == 4.5 and math.isnan(points[1].loss)


def test_options_and_overrides_are_checked():
    with pytest.raises(ValueError, match="unknown study widht"):
        ReproduceOptions(only=("widht",))
    with pytest.raises(ValueError, match="size must be one of"):
        ReproduceOptions(size="huge")
    assert _settings(["train.threads=2", "data.path=/x/y", "model.qk_norm=false"]) == {
        "train.threads": 2,
        "data.path": "/x/y",
        "model.qk_norm": False,
    }


def test_every_size_has_every_sweep_file():
    for size in ("smoke", "quick", "full"):
        for study in STUDIES.values():
            for part in study.parts:
                assert (STUDIES_DIR / size / f"{part.stem}.toml").is_file(), (size, part.stem)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = [stdlib / name for name in ("argparse.py", "textwrap.py", "shlex.py")]
    return prepare(
        files, tmp_path_factory.mktemp("corpus") / "tokens", vocab_size=512, val_fraction=0.3
    )


def test_smoke_reproduce_end_to_end(corpus, tmp_path):
    """Two studies of the smoke size through real sweeps, fits and the report; the report's
    numbers are the runs' numbers, and re-running only re-analyses (same report)."""
    report = tmp_path / "REPORT.md"
    command = [
        sys.executable,
        "-m",
        "hyperp",
        "reproduce",
        "--smoke",
        "--only",
        "tokens",
        "moe",
        "--studies",
        str(STUDIES_DIR),
        "--out",
        str(tmp_path / "runs"),
        "--report",
        str(report),
        "--set",
        f"data.path={corpus}",
        "--set",
        "data.vocab_size=512",
    ]
    done = subprocess.run(
        command, env=subprocess_env(), capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    text = report.read_text()
    assert "## 4. Token budget" in text and "## 5. Mixture of experts" in text
    assert "## 1. Width transfer" not in text
    for figure in ("tokens.png", "moe.png"):
        assert f"(report/figures/{figure})" in text
        assert (tmp_path / "report" / "figures" / figure).stat().st_size > 1000
    assert "--only tokens" in text and "Claim 4" in text and "Claim 7a" in text
    assert "| Claim 4: lr* ~ T^-0.32 |" in text  # the summary table gathers the verdicts
    # The MoE balance table holds each run's own validation loss.
    balance = sorted((tmp_path / "runs" / "moe_balance").glob("*/summary.json"))
    assert len(balance) == 2
    results = json.loads((tmp_path / "report" / "results.json").read_text())
    table = results["studies"]["moe"]["numbers"]["balance"]
    for path in balance:
        summary = json.loads(path.read_text())
        weight = summary["config"]["model"]["moe_balance_weight"]
        assert [weight, summary["val_loss"]] in [row[:2] for row in table]
    # The seed phase ran beside the best LR of each budget.
    seeds = list((tmp_path / "runs" / "tokens-seeds").glob("*/*/summary.json"))
    assert seeds and all(json.loads(p.read_text())["seed"] == 1 for p in seeds)
    # Re-running trains nothing new and writes the same report.
    again = subprocess.run(
        command, env=subprocess_env(), capture_output=True, text=True, timeout=600, check=False
    )
    assert again.returncode == 0, again.stderr
    sweeps = [line for line in again.stdout.splitlines() if "trained," in line]
    assert sweeps and all("(0 trained," in line for line in sweeps), again.stdout
    assert report.read_text() == text
    # One section's own command updates that section in place and keeps the others.
    only_moe = [word for word in command if word != "tokens"] + ["--report-only"]
    done = subprocess.run(
        only_moe, env=subprocess_env(), capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr
    updated = report.read_text()
    assert "## 4. Token budget" in updated and "## 5. Mixture of experts" in updated

    def tokens_section(report_text: str) -> str:
        return report_text.split("## 4. Token budget")[1].split("## 5.")[0]

    assert tokens_section(updated) == tokens_section(text)
