"""``hyperp plot``: loss against step and tokens, the LR schedule, stability indicators; one
run or a sweep coloured by the swept value."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib import colormaps
from matplotlib.colors import to_rgba
from matplotlib.image import imread

from hyperp.cli import main
from hyperp.serve import read_metrics
from hyperp.serve.curves import plot_runs
from hyperp.train import load_config
from hyperp.train.trainer import train
from serve_support import TINY, corpus, trained_run


def lines_by_color(axes) -> dict:
    return {to_rgba(line.get_color()): line for line in axes.get_lines()}


def test_plot_one_run_with_indicators(tmp_path, capsys):
    run_dir = trained_run("moe")
    out = tmp_path / "moe.png"
    assert main(["plot", str(run_dir), "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    image = imread(out)
    assert image.shape[0] > 400 and image.shape[1] > 1000

    figure, _ = plot_runs([run_dir])
    axes = [a for a in figure.axes if a.get_visible()]
    titles = [a.get_title() for a in axes]
    assert titles[:3] == [
        "loss (line: train; circles: validation)",
        "loss against tokens",
        "LR schedule (dotted: planned; dot: now)",
    ]
    for indicator in ("branch output RMS", "attention Z", "router Z", "MaxVio"):
        assert indicator in titles
    records = read_metrics(run_dir)
    train_line, val_line = axes[0].get_lines()[:2]
    assert list(train_line.get_xdata()) == [r["step"] for r in records]
    assert list(train_line.get_ydata()) == [r["loss"] for r in records]
    assert list(val_line.get_xdata()) == [r["step"] for r in records if "val_loss" in r]
    lr_line = axes[2].get_lines()[0]
    assert lr_line.get_ydata()[0] > lr_line.get_ydata()[-1]  # the decaying schedule
    router = axes[titles.index("router Z")].get_lines()[0]
    assert list(router.get_ydata()) == [r["router_z"] for r in records if "router_z" in r]


def test_plot_a_sweep_coloured_by_the_swept_value(tmp_path):
    sweep = tmp_path / "sweep"
    for lr in (0.01, 0.03, 0.1):
        values = {**TINY, "data.path": str(corpus()), "optim.base_lr": lr}
        values.update({"train.monitor_every": 0, "train.steps": 4, "train.eval_every": 2})
        train(load_config(None, values), sweep / f"lr{lr}")
    figure, runs = plot_runs([sweep])
    assert [run.settings["optim.base_lr"] for run in runs] == [0.01, 0.03, 0.1]
    assert [run.label for run in runs] == ["base_lr=0.01", "base_lr=0.03", "base_lr=0.1"]
    visible = [a for a in figure.axes if a.get_visible()]
    # No monitoring steps: no indicator row. A colour bar names the swept setting.
    assert "attention Z" not in [a.get_title() for a in visible]
    assert any(a.get_ylabel() == "optim.base_lr" for a in figure.axes)
    # The LR panel: each run's planned schedule (dotted), logged LR (solid) and current step.
    logged = [line for line in visible[2].get_lines() if line.get_linestyle() == "-"]
    logged = [line for line in logged if line.get_marker() in ("None", None, "")]
    colors = [to_rgba(line.get_color()) for line in logged]
    assert len(set(colors)) == 3
    # Colours run along the sequential scale with the swept value, each on its own run's curve.
    scale = colormaps["viridis"]
    assert colors == [scale(0.9 * (lr - 0.01) / (0.1 - 0.01)) for lr in (0.01, 0.03, 0.1)]
    for color, run in zip(colors, runs):
        line = {to_rgba(line.get_color()): line for line in logged}[color]
        assert np.allclose(line.get_ydata(), [r["lr"] for r in read_metrics(run.path)])
    assert main(["plot", str(sweep), "--out", str(tmp_path / "sweep.png")]) == 0
    assert imread(tmp_path / "sweep.png").shape[1] > 1000


def test_plot_mistakes_are_one_line(tmp_path, capsys):
    assert main(["plot", str(tmp_path / "nothing"), "--out", str(tmp_path / "x.png")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["plot", str(tmp_path), "--out", str(tmp_path / "x.png")]) == 2
    assert "holds no runs" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError):
        plot_runs([tmp_path])
