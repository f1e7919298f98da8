"""``hyperp.load_run``: model, config, tokenizer, step and metrics of a run directory."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import hyperp
from hyperp.model import Transformer
from hyperp.serve import read_metrics
from hyperp.train.checkpoint import list_checkpoints, load_model_weights
from serve_support import corpus, trained_run


def test_load_run_gives_the_trained_model_and_its_context():
    run_dir = trained_run("moe")
    run = hyperp.load_run(run_dir, device="cpu")
    assert isinstance(run.model, Transformer) and not run.model.training
    assert run.step == 10 and run.config.model.moe_shared_expert
    assert run.tokenizer.get_vocab_size() == run.config.model.vocab_size == 512
    assert [r["step"] for r in run.metrics] == list(range(1, 11))
    assert "val_loss" in run.metrics[-1] and any("router_z" in r for r in run.metrics)
    # The same function as a model built the ordinary way from the same weights.
    state, step = load_model_weights(run_dir)
    assert step == run.step
    reference = Transformer(run.config.model).eval()
    reference.load_state_dict(state)
    tokens = torch.tensor([run.encode("def parse_args(self, args=None):")])
    assert tokens[0, 0] == run.eot_id  # a prompt starts a new document
    with torch.no_grad():
        assert torch.equal(run.model(tokens).logits, reference(tokens).logits)
    assert run.decode(run.encode("x = 1\n")) == "x = 1\n"


def test_load_run_takes_an_earlier_step_and_names_the_ones_there_are():
    run_dir = trained_run("dense_ga")
    steps = [step for step, _ in list_checkpoints(run_dir / "checkpoints")]
    early = hyperp.load_run(run_dir, step=steps[0], device="cpu")
    late = hyperp.load_run(run_dir, device="cpu")
    assert (early.step, late.step) == (steps[0], steps[-1]) and steps[0] < steps[-1]
    assert not torch.equal(early.model.head.weight, late.model.head.weight)
    with pytest.raises(ValueError, match="has no checkpoint of step 3"):
        hyperp.load_run(run_dir, step=3)


def test_tokenizer_comes_from_the_run_first_then_the_corpus(tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run("dense_ga"), run_dir)
    # The trainer keeps a copy of its data's tokenizer in the run directory.
    assert hyperp.load_run(run_dir, device="cpu").tokenizer_path == run_dir / "tokenizer.json"
    (run_dir / "tokenizer.json").unlink()
    assert hyperp.load_run(run_dir, device="cpu").tokenizer_path == corpus() / "tokenizer.json"
    # Without the run's copy, a corpus that has since moved is a clear error.
    config = json.loads((run_dir / "config.json").read_text())
    config["data"]["path"] = str(tmp_path / "moved")
    (run_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(FileNotFoundError, match="copy the corpus's tokenizer.json into"):
        hyperp.load_run(run_dir, device="cpu")
    shutil.copyfile(corpus() / "tokenizer.json", run_dir / "tokenizer.json")
    run = hyperp.load_run(run_dir, device="cpu")
    assert run.tokenizer_path == run_dir / "tokenizer.json"


def test_load_run_errors_name_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        hyperp.load_run(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        hyperp.load_run(tmp_path / "empty")
    run_dir = tmp_path / "edited"
    shutil.copytree(trained_run("dense_ga"), run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    config["model"]["gated_attention"] = False
    (run_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="does not fit the run's model config"):
        hyperp.load_run(run_dir, device="cpu")
    with pytest.raises(ValueError, match="unknown device"):
        hyperp.load_run(trained_run("dense_ga"), device="tpu:x")


def test_read_metrics_skips_a_torn_last_line_and_restores_non_finite_values(tmp_path):
    lines = ['{"step": 1, "loss": 5.0}', '{"step": 2, "loss": "nan"}', '{"step": 3, "lo']
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines))
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [1, 2]
    assert records[1]["loss"] != records[1]["loss"]  # NaN
    (tmp_path / "metrics.jsonl").write_text("\n".join([lines[2], lines[0]]))
    with pytest.raises(ValueError, match="metrics.jsonl:1 is not valid JSON"):
        read_metrics(tmp_path)
    assert read_metrics(tmp_path / "nothing") == []
