"""Helpers shared by the trainer tests: a tiny config, run-directory readers, launching CLIs."""

import json
import subprocess
import sys
from pathlib import Path

import torch

from hyperp.train import load_config
from hyperp.train.checkpoint import load_model_weights
from support import subprocess_env

TINY = {
    "model.depth": 2,
    "model.width": 32,
    "model.head_dim": 16,
    "model.n_kv_heads": 2,
    "model.context": 32,
    "model.head_init_rule": "inverse_width",
    "model.base_width": 64,
    "train.batch_size": 8,
    "train.seq_len": 32,
    "train.log_every": 1,
    "train.eval_every": 4,
    "train.eval_batches": 2,
    "train.checkpoint_every": 4,
    "train.progress": False,
    "train.monitor_every": 3,
    "train.steps": 8,
    "optim.base_lr": 0.03,
}


def config(corpus, **overrides):
    return load_config(None, {**TINY, "data.path": str(corpus), **overrides})


def logged(run_dir: Path, key="loss") -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r[key] for r in records if key in r}


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_model_weights(run_dir)[0]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = final_weights(a), final_weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name


def run_cli(args, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "hyperp", "train", *args],
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


def cli_args(corpus, out, **overrides):
    values = {**TINY, "data.path": str(corpus), **overrides}
    return ["--config", "tiny", "--out", str(out)] + [f"--{k}={v}" for k, v in values.items()]


def torchrun(corpus, out, nproc=2, strategy="fsdp", args=(), timeout=600, **overrides):
    """``hyperp train ARGS`` on ``nproc`` gloo processes; returns the completed process."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node", str(nproc), "-m", "hyperp", "train", *args]
    command += cli_args(
        corpus, out, **{"train.distributed": strategy, "train.threads": 1, **overrides}
    )
    return subprocess.run(
        command,
        env=subprocess_env(OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


TIMING = {"name", "wall_time_s", "tokens_per_s"}  # what an interruption may change


def assert_same_summary(a: Path, b: Path) -> None:
    """summary.json of two runs, equal except for wall-clock figures and the run's name."""
    sa, sb = (json.loads((run / "summary.json").read_text()) for run in (a, b))
    assert {k: v for k, v in sa.items() if k not in TIMING} == {
        k: v for k, v in sb.items() if k not in TIMING
    }
