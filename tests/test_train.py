"""The trainer: configs, resume, kills, signals, divergence, distributed equivalence."""

import json
import signal
import time
from pathlib import Path

import pytest

from hyperp.cli import main
from hyperp.train import load_config
from hyperp.train.checkpoint import list_checkpoints, load_model_weights
from hyperp.train.trainer import TrainingDiverged, train
from training import (
    COMPARED_PRECISIONS,
    MATCH_ONE,
    PIN_FP32,
    assert_equal_up_to_rounding,
    assert_same_summary,
    assert_same_weights,
    cli_args,
    config,
    logged,
    run_cli,
    torchrun,
)


def test_config_errors_name_the_fix(tmp_path):
    with pytest.raises(ValueError, match="did you mean train.steps"):
        load_config(None, ["--train.stesp", "3"])
    with pytest.raises(ValueError, match="not a valid int"):
        load_config(None, ["--train.steps", "many"])
    with pytest.raises(ValueError, match="overrides look like"):
        load_config(None, ["--trian.steps", "3"])
    with pytest.raises(FileNotFoundError, match="preset name"):
        load_config("nonexistent.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[model]\ndepth = 2\nwidht = 4\n")
    with pytest.raises(ValueError, match="did you mean model.width"):
        load_config(bad)
    bad.write_text("[model\n")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_config(bad)
    # values of the wrong type are refused, not converted
    for text, message in [
        ("[train]\nsteps = 2.5\n", r"train.steps must be an integer, got 2.5 \(float\)"),
        ("[train]\nsteps = 2.0\n", r"train.steps must be an integer, got 2.0"),
        ("[model]\ndepth = true\n", r"model.depth must be an integer, got True \(bool\)"),
        ('[train]\nsteps = "100"\n', r"train.steps must be an integer, got '100' \(str\)"),
        ("[optim]\nbase_lr = true\n", r"optim.base_lr must be a number, got True"),
        ("[train]\ncompile = 1\n", r"train.compile must be true or false, got 1"),
        ("[model]\nhead_init_rule = 3\n", r"model.head_init_rule must be a string, got 3"),
    ]:
        bad.write_text(text)
        with pytest.raises(ValueError, match=message):
            load_config(bad)
    assert load_config(None, {"optim.base_lr": 1}).optim.base_lr == 1.0  # an int is a number
    with pytest.raises(ValueError, match=r"--model.n_heads 'four' is not a valid int"):
        load_config(None, ["--model.n_heads", "four"])
    assert load_config(None, ["--model.n_heads", "none"]).model.n_heads is not None  # derived
    with pytest.raises(ValueError, match="no training budget"):
        load_config(None, {"train.steps": 0}).resolve(512).plan()
    with pytest.raises(ValueError, match="optim.method"):
        load_config(None, {"optim.method": "sgd"})
    assert load_config("tiny", ["--model.qk_norm=false"]).model.qk_norm is False


def test_plan_applies_the_transfer_rule():
    from hyperp.rules import ModelScale, TransferRule

    cfg = load_config(
        "tiny",
        {
            "optim.base_depth": 2,
            "optim.base_width": 64,
            "optim.base_tokens": 1e6,
            "optim.base_batch": 2048,
        },
    )
    cfg = cfg.resolve(8192)
    plan = cfg.plan()
    rule = TransferRule(
        base=ModelScale(depth=2, width=64, head_dim=32, vocab_size=8192, context=256),
        base_lr=0.02,
        base_tokens=1e6,
        base_batch=2048,
    )
    assert plan.lr == pytest.approx(0.02 * rule.lr_multiplier(cfg.model.scale(), plan.tokens, 4096))
    assert plan.depth_ratio == 0.5
    # Chinchilla-style budget when only the base budget is given
    cfg = load_config(
        "tiny",
        {"train.steps": 0, "optim.base_depth": 2, "optim.base_width": 64, "optim.base_tokens": 1e6},
    )
    cfg = cfg.resolve(8192)
    expected = 1e6 * cfg.model.scale().params / rule.base.params
    assert abs(cfg.plan().tokens - expected) <= cfg.train.batch_tokens
    given = load_config("tiny", {"optim.lr": 0.1}).resolve(8192).plan()
    assert given.lr == 0.1 and "given directly" in given.explanation[2]


def test_train_writes_the_run_directory(corpus, tmp_path):
    result = train(config(corpus), tmp_path / "run")
    assert result.status == "finished" and result.exit_code == 0
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    for key in (
        "train_loss",
        "val_loss",
        "tokens",
        "flops",
        "params",
        "lr",
        "tokens_per_s",
        "wall_time_s",
        "depth",
        "width",
        "method",
        "config",
    ):
        assert summary[key] is not None, key
    assert summary["tokens"] == 8 * 8 * 32 and summary["steps"] == 8
    losses = logged(tmp_path / "run")
    assert sorted(losses) == list(range(1, 9))
    assert losses[8] < losses[1]
    monitored = logged(tmp_path / "run", "attn_z")
    assert sorted(monitored) == [1, 3, 6]  # monitor steps only
    assert sorted(logged(tmp_path / "run", "val_loss")) == [4, 8]
    assert [s for s, _ in list_checkpoints(tmp_path / "run/checkpoints")] == [4, 8]
    again = train(config(corpus), tmp_path / "run")  # a finished run is not redone
    assert again.status == "already finished"


def test_resume_is_exact(corpus, tmp_path):
    straight = tmp_path / "straight"
    train(config(corpus), straight)
    split = tmp_path / "split"
    first = train(config(corpus), split, stop_after=3)  # not a checkpoint step
    assert first.status == "interrupted" and first.exit_code == 0
    assert max(logged(split)) == 3
    second = train(config(corpus), split)
    assert second.status == "finished"
    assert logged(split) == logged(straight)
    assert logged(split, "val_loss") == logged(straight, "val_loss")
    assert_same_weights(split, straight)
    assert_same_summary(split, straight)


def test_resume_refuses_a_changed_config(corpus, tmp_path):
    train(config(corpus), tmp_path / "run", stop_after=2)
    with pytest.raises(ValueError, match=r"different config \(model.width: 32 -> 48"):
        train(config(corpus, **{"model.width": 48}), tmp_path / "run")
    # settings that do not change the trajectory may change
    assert train(config(corpus, **{"train.log_every": 2}), tmp_path / "run").status == "finished"
    with pytest.raises(ValueError, match="already holds a run"):
        train(config(corpus), tmp_path / "run2", stop_after=1) and train(
            config(corpus), tmp_path / "run2", resume="never"
        )


def test_non_finite_loss_stops_with_the_checkpoint_intact(corpus, tmp_path, monkeypatch):
    from hyperp.model import Transformer

    original = Transformer.forward
    calls = {"n": 0}

    def poisoned(self, tokens, targets=None):
        out = original(self, tokens, targets)
        calls["n"] += 1
        if targets is not None and calls["n"] == 6:
            out.loss = out.loss * float("nan")
            out.lm_loss = out.lm_loss * float("nan")
        return out

    monkeypatch.setattr(Transformer, "forward", poisoned)
    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=r"nan at step 6.*Last good checkpoint: step 4"):
        train(config(corpus, **{"train.eval_every": 0}), run)
    assert [s for s, _ in list_checkpoints(run / "checkpoints")] == [4]
    assert (
        not (run / "summary.json").exists()
        and "TrainingDiverged" in (run / "error.txt").read_text()
    )


def wait_for_checkpoint(run: Path, process, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if list_checkpoints(run / "checkpoints"):
            return
        assert process.poll() is None, process.stdout.read()
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared")


@pytest.mark.parametrize("kill", [signal.SIGKILL, signal.SIGINT])
def test_killed_run_resumes_and_finishes(corpus, tmp_path, kill):
    overrides = {"train.steps": 40, "train.checkpoint_every": 2, "train.eval_every": 0}
    straight = tmp_path / "straight"
    assert train(config(corpus, **overrides), straight).status == "finished"
    run = tmp_path / "run"
    process = run_cli(cli_args(corpus, run, **overrides))
    wait_for_checkpoint(run, process)
    process.send_signal(kill)
    output, _ = process.communicate(timeout=120)
    if kill == signal.SIGINT:
        assert process.returncode == 130, output
        assert "checkpoint saved" in output
    assert not (run / "summary.json").exists()
    # every complete checkpoint present loads
    for step, _ in list_checkpoints(run / "checkpoints"):
        load_model_weights(run, step)
    finish = run_cli(cli_args(corpus, run, **overrides))
    output, _ = finish.communicate(timeout=300)
    assert finish.returncode == 0, output
    assert "resumed from" in output
    assert logged(run) == logged(straight)
    assert_same_weights(run, straight)
    assert_same_summary(run, straight)  # train_loss averages the same window of steps


def test_cli_errors_are_one_line(corpus, tmp_path, capsys):
    assert (
        main(["train", "--out", str(tmp_path / "r"), "--data.path", str(tmp_path / "missing")]) == 2
    )
    err = capsys.readouterr().err
    assert "error:" in err and "missing" in err and "Traceback" not in err
    assert main(["train", "--train.stesp", "2"]) == 2
    assert "did you mean train.steps" in capsys.readouterr().err
    assert main(["train", "--dry-run", "--json", "--train.steps", "7"]) == 0
    assert json.loads(capsys.readouterr().out)["plan"]["steps"] == 7
    with pytest.raises(SystemExit):
        main(["transfer", "--depth", "8", "--model.width", "3"])  # overrides only where accepted


@pytest.mark.distributed
@pytest.mark.parametrize("ns_dtype", COMPARED_PRECISIONS)
@pytest.mark.parametrize(("strategy", "nproc"), [("ddp", 2), ("fsdp", 2), ("hsdp", 4)])
def test_several_processes_match_one(corpus, tmp_path, strategy, nproc, ns_dtype):
    # An MoE model with a shared expert (global balancing loss) and validation. Same global
    # batch, same data rows: the runs differ only by the order of floating-point reductions
    # (gradient reduce-scatter or all-reduce against one sum, sphere norms from per-rank partial
    # sums), grown over 8 steps of Newton-Schulz.
    overrides = {**MATCH_ONE, "optim.ns_dtype": ns_dtype}
    single = tmp_path / "single"
    train(config(corpus, **overrides), single)
    multi = tmp_path / strategy
    done = torchrun(corpus, multi, nproc, strategy, **overrides)
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads((multi / "summary.json").read_text())["processes"] == nproc
    assert_equal_up_to_rounding(single, multi, ns_dtype)


@pytest.mark.parametrize("ns_dtype", COMPARED_PRECISIONS)
def test_gradient_accumulation_matches_one_big_batch(corpus, tmp_path, ns_dtype):
    # The same global batch in 2 micro-batches: equal up to float summation order.
    # (The first run evaluates nothing at all: its summary has no validation loss.)
    pinned = {"optim.ns_dtype": ns_dtype, "train.eval_every": 0, "train.eval_batches": 0}
    train(config(corpus, **pinned), tmp_path / "one")
    assert json.loads((tmp_path / "one/summary.json").read_text())["val_loss"] is None
    train(config(corpus, **pinned, **{"train.grad_accum": 2}), tmp_path / "two")
    assert_equal_up_to_rounding(tmp_path / "one", tmp_path / "two", ns_dtype)


def test_bf16_autocast_on_cpu_tracks_fp32(corpus, tmp_path):
    # Newton-Schulz pinned: only the autocast precision differs between the two runs.
    pinned = {**PIN_FP32, "train.eval_every": 0}
    train(config(corpus, **pinned), tmp_path / "fp32")
    train(config(corpus, **pinned, **{"train.precision": "bf16"}), tmp_path / "bf16")
    fp32, bf16 = logged(tmp_path / "fp32"), logged(tmp_path / "bf16")
    assert bf16[8] < bf16[1]
    for step in fp32:  # bf16 matmuls keep ~3 significant digits; the loss stays within 1%
        assert bf16[step] == pytest.approx(fp32[step], rel=0.01)


def test_missing_tensorboard_extra_is_named(corpus, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(ValueError, match=r"pip install 'hyperp\[tensorboard\]'"):
        train(config(corpus, **{"train.tensorboard": True}), tmp_path / "tb")
