"""LR schedules (docs/method.md §4.2): linear (the paper's), cosine and warmup-stable-decay,
one owner of their shape (hyperp.rules.lr_schedule), the transfer rule setting the peak of each."""

import itertools
import math

import pytest

from hyperp.rules import SCHEDULES, lr_schedule
from hyperp.train import load_config
from hyperp.train.trainer import train
from training import config, logged


@pytest.mark.parametrize("shape", SCHEDULES)
@pytest.mark.parametrize("warmup", [0, 5])
def test_every_shape_runs_from_peak_to_the_final_fraction_without_rising(shape, warmup):
    total = 50
    values = [
        lr_schedule(s, total, warmup_steps=warmup, final_fraction=0.1, shape=shape)
        for s in range(total)
    ]
    after = values[warmup:]
    assert after[0] == pytest.approx(1.0) and after[-1] == pytest.approx(0.1)
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(after))
    if warmup:
        assert values[:warmup] == pytest.approx([(s + 1) / warmup for s in range(warmup)])


def test_cosine_is_half_a_cosine():
    total, final = 101, 0.1  # 100 decay steps: progress p = step / 100
    for step in (0, 25, 50, 75, 100):
        p = step / 100
        expected = final + (1 - final) * (1 + math.cos(math.pi * p)) / 2
        assert lr_schedule(step, total, shape="cosine") == pytest.approx(expected)
    assert lr_schedule(50, total, shape="cosine") == pytest.approx(0.55)


def test_wsd_holds_the_peak_then_decays_over_its_fraction():
    total = 101  # progress p = step / 100; decay over the last 20% of it
    stable = [lr_schedule(s, total, shape="wsd", decay_fraction=0.2) for s in range(81)]
    assert stable == [1.0] * 81
    assert lr_schedule(90, total, shape="wsd", decay_fraction=0.2) == pytest.approx(0.55)
    assert lr_schedule(100, total, shape="wsd", decay_fraction=0.2) == pytest.approx(0.1)
    # decay_fraction 1 is the linear schedule
    for s in range(total):
        assert lr_schedule(s, total, shape="wsd", decay_fraction=1.0) == pytest.approx(
            lr_schedule(s, total, shape="linear")
        )


def test_bad_schedule_settings_are_one_clear_line():
    with pytest.raises(ValueError, match="optim.schedule must be one of"):
        load_config("tiny", {"optim.schedule": "exponential"})
    with pytest.raises(ValueError, match=r"optim.decay_fraction must be in \(0, 1\]"):
        load_config("tiny", {"optim.decay_fraction": 0})


def test_the_transfer_rule_sets_the_same_peak_for_every_shape():
    base = {"optim.base_depth": 8, "optim.base_tokens": 1e6, "optim.base_batch": 2**14}
    plans = [
        load_config("tiny", {**base, "optim.schedule": shape}).resolve(8192).plan()
        for shape in SCHEDULES
    ]
    assert len({plan.lr for plan in plans}) == 1 and plans[0].lr_multiplier != 1.0
    assert [plan.explanation[-1].split()[1] for plan in plans] == ["linear", "cosine", "constant,"]


@pytest.mark.parametrize("shape", ["cosine", "wsd"])
def test_trainer_follows_the_schedule_step_by_step(corpus, tmp_path, shape):
    overrides = {"optim.schedule": shape, "optim.decay_fraction": 0.5, "train.steps": 10}
    overrides.update({"optim.warmup_steps": 2, "train.eval_every": 0, "train.checkpoint_every": 0})
    run = config(corpus, **overrides)
    assert train(run, tmp_path / "run").status == "finished"
    lrs = logged(tmp_path / "run", "lr")
    peak = run.resolve(512).plan().lr
    for step, lr in lrs.items():
        expected = lr_schedule(
            step - 1, 10, warmup_steps=2, final_fraction=0.1, shape=shape, decay_fraction=0.5
        )
        assert lr == pytest.approx(peak * expected, rel=1e-9), step
    assert sorted(lrs) == list(range(1, 11))
