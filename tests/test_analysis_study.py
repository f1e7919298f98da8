"""`hyperp fit` end to end: readers, the study, the report, the plots, and the CLI."""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hyperp.analysis import FitOptions, analyze, load_records, record_value
from hyperp.analysis import plots as analysis_plots
from hyperp.cli import fit as fit_cli

SRC = str(Path(__file__).resolve().parents[1] / "src")
TOKEN_EXPONENT = -0.32
HYPERP_COMPUTE_RATIO = 1.5


def synthetic_rows(seed: int = 0) -> list[dict]:
    """Two methods x four token budgets x 7 LRs; HyperP needs 1.5x less compute per loss."""
    rng = np.random.default_rng(seed)
    rows = []
    for method, ratio in (("muon", 1.0), ("hyperp", HYPERP_COMPUTE_RATIO)):
        for tokens in (1e9, 2e9, 4e9, 8e9):
            flops = 6e8 * tokens
            best_loss = 50.0 * (flops * ratio) ** -0.1 + 1.8
            optimum = 0.02 * (tokens / 1e9) ** TOKEN_EXPONENT
            for lr in optimum * np.exp(np.linspace(-1.5, 1.5, 7)):
                loss = best_loss + 0.03 * math.log(lr / optimum) ** 2 + rng.normal(0, 0.001)
                rows.append(
                    {"method": method, "tokens": tokens, "flops": flops, "lr": lr, "val_loss": loss}
                )
    return rows


def write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def run_fit(argv: list[str]) -> int:
    """Dispatch `hyperp fit ARGV` the way hyperp.cli.main does, with only this verb registered."""
    parser = argparse.ArgumentParser(prog="hyperp")
    sub = parser.add_subparsers(dest="verb", required=True)
    fit_cli.register(sub)
    args = parser.parse_args(["fit", *argv])
    return args.func(args)


def make_run_dir(root: Path, name: str, *, lr: float, depth: int, val_loss: float) -> Path:
    run = root / name
    run.mkdir(parents=True)
    config = {"model": {"depth": depth, "width": 32 * depth}, "optim": {"lr": lr}, "train": {}}
    summary = {
        "name": name,
        "status": "finished",
        "method": "hyperp",
        "lr": lr,
        "base_lr": lr,
        "val_loss": val_loss,
        "tokens": 1e6,
        "flops": 1e12 * depth,
        "depth": depth,
        "width": 32 * depth,
        "config": config,
    }
    (run / "config.json").write_text(json.dumps(config))
    (run / "summary.json").write_text(json.dumps(summary))
    return run


def test_csv_study_through_cli_json(tmp_path, capsys):
    path = write_csv(tmp_path / "results.csv", synthetic_rows())
    assert run_fit([str(path), "--json", "--bootstrap", "200", "--target", "1e11"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["group_by"] == ["method", "tokens"]
    assert len(result["groups"]) == 8
    assert all(group["optimum"]["inside"] for group in result["groups"])
    laws = {law["family"]["method"]: law for law in result["power_laws"]}
    for law in laws.values():
        assert law["fit"]["exponent"] == pytest.approx(TOKEN_EXPONENT, abs=0.02)
        assert law["target"]["optimum"] == pytest.approx(0.02 * 100**TOKEN_EXPONENT, rel=0.05)
        assert law["spread"] == pytest.approx(8**-TOKEN_EXPONENT, rel=0.1)
        # The optimal loss against tokens, A T^b + C, falls with the budget.
        assert law["loss_fit"]["exponent"] < 0
    (lev,) = result["leverage"]
    assert lev["method"] == "hyperp" and lev["baseline"] == "muon"
    assert np.allclose(lev["leverage"], HYPERP_COMPUTE_RATIO, rtol=0.1)
    curves = {item["method"]: item for item in result["loss_vs_compute"]}
    assert curves["muon"]["preferred"] == "offset"  # 4 compute points


def test_report_directory_has_markdown_json_and_pngs(tmp_path, capsys):
    path = write_csv(tmp_path / "results.csv", synthetic_rows())
    report = tmp_path / "report"
    assert run_fit([str(path), "--report", str(report), "--bootstrap", "100"]) == 0
    text = capsys.readouterr().out
    assert "Power law of the optimal lr against tokens" in text
    assert "hyperp over muon" in text
    names = {p.name for p in report.iterdir()}
    expected = {"report.md", "results.json", "lr_sweeps.png", "lr_power_law.png"}
    assert expected | {"loss_vs_flops.png", "leverage.png"} == names
    for png in report.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (report / "report.md").read_text()
    assert "![Loss against learning rate](lr_sweeps.png)" in markdown
    assert "| method=muon, tokens=1e+09 |" in markdown
    assert json.loads((report / "results.json").read_text())["n_records"] == 56
    assert not [p for p in report.iterdir() if p.name.endswith(".tmp")]  # atomic writes


def test_plots_carry_the_right_axes_and_labels():
    study = analyze(synthetic_rows(), FitOptions(bootstrap=50))
    sweeps = analysis_plots.plot_lr_sweeps(study.groups, x="lr", y="val_loss")
    panels = [ax for ax in sweeps.axes if ax.get_visible()]
    assert len(panels) == 2  # one per method; tokens are the colours
    for ax in panels:
        assert ax.get_xscale() == "log"
        assert ax.get_xlabel() == "learning rate" and ax.get_ylabel() == "val loss"
        assert len(ax.get_lines()) >= 4  # a parabola per token budget
    assert {ax.get_title() for ax in panels} == {"method=hyperp", "method=muon"}

    law = analysis_plots.plot_power_laws(study.power_laws)
    (ax,) = law.axes
    assert (ax.get_xscale(), ax.get_yscale()) == ("log", "log")
    assert ax.get_xlabel() == "training tokens"
    assert ax.get_ylabel() == "optimal learning rate"

    compute = analysis_plots.plot_loss_vs_compute(study.compute)
    (ax,) = compute.axes
    assert ax.get_xscale() == "log" and ax.get_xlabel() == "training FLOPs"
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    assert "hyperp" in legend and "muon" in legend

    lev = analysis_plots.plot_leverage(study.leverage)
    (ax,) = lev.axes
    assert ax.get_xscale() == "log"
    assert ax.get_ylabel().startswith("compute leverage")
    xs, ys = ax.get_lines()[0].get_data()
    assert np.allclose(ys, HYPERP_COMPUTE_RATIO, rtol=0.1) and len(xs) == 4


def test_run_directories_failed_runs_and_dotted_keys(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    for depth in (2, 4):
        for lr in (0.005, 0.01, 0.02, 0.04):
            make_run_dir(
                sweep,
                f"d{depth}-lr{lr}",
                lr=lr,
                depth=depth,
                val_loss=4.0 - 0.1 * depth + 0.05 * math.log(lr / 0.012) ** 2,
            )
    failed = sweep / "d4-lr0.08"
    failed.mkdir()
    (failed / "config.json").write_text("{}")
    (failed / "error.txt").write_text("Traceback ...\nRuntimeError: loss is NaN at step 12\n")
    loaded = load_records([sweep])
    assert len(loaded.records) == 8
    assert [item.error for item in loaded.failed] == ["RuntimeError: loss is NaN at step 12"]
    assert record_value(loaded.records[0], "model.width") == 32 * loaded.records[0]["depth"]

    assert run_fit([str(sweep), "--group-by", "model.depth", "--bootstrap", "100"]) == 0
    out = capsys.readouterr().out
    assert "model.depth=2: lr*=0.012" in out
    assert "run without summary" in out and "loss is NaN at step 12" in out
    # One token budget only: the power law is reported as missing, not attempted.
    assert "one tokens value only" in out


def test_jsonl_input_and_degenerate_groups(tmp_path, capsys):
    rows = [
        {"group": "a", "lr": 0.01, "loss": 3.0},
        {"group": "a", "lr": 0.02, "loss": 2.9},  # two points only
        {"group": "b", "lr": 0.01, "loss": 3.0},
        {"group": "b", "lr": 0.02, "loss": 2.95},
        {"group": "b", "lr": 0.04, "loss": 2.9},  # monotone
        {"group": "c", "lr": 0.01, "loss": 3.1},
        {"group": "c", "lr": 0.02, "loss": "NaN"},
        {"group": "c", "lr": 0.04, "loss": 3.05},
        {"group": "c", "lr": 0.08, "loss": 3.2},
    ]
    path = tmp_path / "export.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    # No --y and no --group-by: a W&B-style export's "loss" and "group" columns are found.
    assert run_fit([str(path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["options"]["y"] == "loss" and result["group_by"] == ["group"]
    groups = {g["key"]["group"]: g for g in result["groups"]}
    assert "at least 3 distinct learning rates" in groups["a"]["error"]
    assert groups["b"]["optimum"]["inside"] is False
    assert groups["b"]["optimum"]["lr"] is None  # NaN -> null, not an extrapolated number
    assert groups["b"]["optimum"]["best_lr"] == 0.04
    assert groups["c"]["optimum"]["dropped"] == 1
    assert any("no loss-against-compute fit" in note for note in result["messages"])


def test_user_mistakes_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run_fit([str(tmp_path / "missing")])
    path = write_csv(tmp_path / "r.csv", synthetic_rows()[:7])
    with pytest.raises(ValueError, match="no record has the x column 'base_lr'"):
        run_fit([str(path), "--x", "base_lr"])
    with pytest.raises(ValueError, match="--group-by column"):
        run_fit([str(path), "--group-by", "depth"])
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="unknown file type"):
        run_fit([str(tmp_path / "notes.txt")])
    with pytest.raises(ValueError, match="baseline method 'adamw'"):
        analyze(synthetic_rows(), FitOptions(baseline="adamw", bootstrap=0))


def test_importing_analysis_does_not_import_torch():
    code = (
        "import sys, hyperp.analysis, hyperp.analysis.plots, hyperp.cli.fit\n"
        "import hyperp.sweep, hyperp.cli.sweep\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('ok')"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": SRC},
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "ok"


def test_verbs_are_registered_with_an_example_in_their_help(capsys):
    from hyperp.cli import VERBS
    from hyperp.cli import sweep as sweep_cli

    assert VERBS["fit"] == "hyperp.cli.fit" and VERBS["sweep"] == "hyperp.cli.sweep"
    for module, verb in ((fit_cli, "fit"), (sweep_cli, "sweep")):
        parser = argparse.ArgumentParser(prog="hyperp")
        module.register(parser.add_subparsers(dest="verb"))
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args([verb, "--help"])
        assert exit_info.value.code == 0
        text = capsys.readouterr().out
        assert f"example:\n  hyperp {verb} " in text


def test_fit_flags_unreliable_optima_and_keeps_them_out_of_power_laws(tmp_path, capsys):
    """A sweep whose best point sits beside a steep rise (a parabola through it misses the
    best point) is reported UNRELIABLE and does not enter the power law; a law through the 2
    usable scales that remain is noted as exact."""
    rows = []
    for tokens, optimum in ((1e9, 0.04), (2e9, 0.032), (4e9, 0.026)):
        for lr in optimum * np.sqrt(2) ** np.arange(-3, 4):
            rows.append(
                {"tokens": tokens, "lr": lr, "val_loss": 3.0 + 0.2 * math.log(lr / optimum) ** 2}
            )
    bent = [r for r in rows if r["tokens"] == 4e9]
    for row, loss in zip(bent, [5.2, 4.6, 4.35, 4.3, 4.32, 6.5, 7.4]):
        row["val_loss"] = loss
    path = write_csv(tmp_path / "r.csv", rows)
    assert run_fit([str(path), "--bootstrap", "50"]) == 0
    text = capsys.readouterr().out
    assert "tokens=4e+09: unreliable fit" in text
    assert "without a usable optimum" in text and "tokens=4e+09" in text.split("usable")[1]
    assert "a power law through 2 scales fits them exactly" in text
    # --window 0 fits every point, as before windows existed.
    assert run_fit([str(path), "--bootstrap", "0", "--window", "0", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert all(g["optimum"]["excluded"] == 0 for g in result["groups"])
