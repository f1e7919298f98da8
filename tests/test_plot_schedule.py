"""``hyperp plot``: the whole planned LR schedule with the current step, validation drawn as
the markers the legend names, and the bounds ``hyperp reproduce`` uses on the stability panels."""

from __future__ import annotations

import numpy as np
import pytest

from hyperp.reproduce.catalogue import threshold
from hyperp.rules import lr_schedule
from hyperp.serve.curves import plot_runs
from hyperp.train import load_config
from hyperp.train.trainer import train
from serve_support import TINY, corpus


def visible_axes(figure) -> dict:
    return {a.get_title(): a for a in figure.axes if a.get_visible()}


@pytest.fixture(scope="module")
def halfway(tmp_path_factory):
    """A cosine run of 12 steps stopped at step 6, validated once, monitored twice."""
    values = {**TINY, "data.path": str(corpus()), "train.steps": 12, "optim.schedule": "cosine"}
    values.update({"train.eval_every": 5, "train.monitor_every": 5, "train.log_every": 1})
    out = tmp_path_factory.mktemp("plot") / "run"
    assert train(load_config(None, values), out, stop_after=6).status == "interrupted"
    return out


def test_planned_schedule_to_the_end_with_the_current_step_marked(halfway, tmp_path):
    figure, runs = plot_runs([halfway])
    lr_axes = next(a for t, a in visible_axes(figure).items() if t.startswith("LR schedule"))
    planned, logged, now = lr_axes.get_lines()
    peak = runs[0].plan["lr"]
    expected = [peak * lr_schedule(s, 12, shape="cosine") for s in range(12)]
    assert list(planned.get_xdata()) == list(range(1, 13))
    np.testing.assert_allclose(planned.get_ydata(), expected, rtol=1e-9)
    assert planned.get_linestyle() == ":"
    assert list(logged.get_xdata()) == list(range(1, 7))  # logged so far
    assert list(now.get_xdata()) == [6] and now.get_marker() == "o"
    figure.savefig(tmp_path / "halfway.png")


def test_validation_is_drawn_as_the_markers_the_legend_and_title_name(halfway):
    figure, _ = plot_runs([halfway])
    loss = next(a for t, a in visible_axes(figure).items() if t.startswith("loss (line"))
    assert "circles: validation" in loss.get_title()
    (val,) = [line for line in loss.get_lines() if line.get_label() == "validation"]
    assert val.get_marker() == "o" and list(val.get_xdata()) == [5]  # one point: one circle
    legend = [text.get_text() for text in loss.get_legend().get_texts()]
    assert legend == ["train", "validation"]


def test_stability_panels_carry_the_reproduction_bounds(halfway):
    figure, runs = plot_runs([halfway])
    panels = visible_axes(figure)
    outliers = panels["activation outliers (%)"]
    assert threshold("outliers_pct") in [line.get_ydata()[0] for line in outliers.get_lines()]
    attention = panels["attention Z"]
    last = runs[0].series("step", "attn_z")[1][-1]
    levels = [line.get_ydata()[0] for line in attention.get_lines() if line.get_linestyle() == "--"]
    assert levels == [pytest.approx(threshold("growth") * last)]
