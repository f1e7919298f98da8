"""Helpers shared by the trainer tests: a tiny config, run-directory readers, launching CLIs."""

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from hyperp.train import load_config
from hyperp.train.checkpoint import list_checkpoints, load_model_weights, read_tensors
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


# Pairs of runs that differ only in the order of floating-point reductions (one process against
# several, a resharded resume, gradient accumulation). Newton-Schulz amplifies the rounding, in
# bf16 far more than in fp32, and a CPU picks bf16 when it runs faster there; so these
# comparisons pin fp32, whatever this CPU would pick, and their tolerances come from the spread
# that tests/spread.py measures (largest over 3 seeds, then a margin for other machines).
PIN_FP32 = {"optim.ns_dtype": "fp32"}
# The MoE model of the one-against-several comparisons: a shared expert (global balancing loss),
# validation, HSDP shards of 2.
MATCH_ONE = {
    "model.moe_sparsity": 2,
    "model.moe_granularity": 2,
    "model.moe_shared_expert": True,
    "train.eval_every": 4,
    "train.shard_size": 2,
}
# A dense run that checkpoints halfway, for resumes.
STOP_HALFWAY = {"train.checkpoint_every": 4, "train.eval_every": 0}


@dataclass(frozen=True)
class Spread:
    """How far two runs that differ only in reduction order may drift apart: the relative
    difference of any logged loss, and of any final weight tensor (Frobenius norm)."""

    loss: float
    weights: float


# Measured by tests/spread.py (3 seeds; largest over DDP/FSDP2/HSDP4 against one process,
# gradient accumulation and resharded resumes). fp32: losses 8.1e-7, weights 1.3e-5, so about
# 10x that. bf16: losses 1.8e-3, but weights drift by up to 0.15 (Newton-Schulz amplifies a
# rounding of one bf16 ulp step after step): the loss curve is what bf16 keeps, and the weights
# only stay in the same region (two unrelated runs differ by about 1.4).
SPREAD = {"fp32": Spread(loss=1e-5, weights=1.5e-4), "bf16": Spread(loss=1e-2, weights=0.5)}
# The optimizer alone (tests/optim_worker.py, 4 steps, fp32): losses 1.0e-7, weights 5.1e-5.
OPTIMIZER_SPREAD = Spread(loss=1e-6, weights=5e-4)
# What the suite compares in: fp32 always, and the precision this CPU chose when it is not fp32
# (tests/conftest.py puts the choice in the environment), asserting what that precision keeps.
MACHINE_NS_DTYPE = os.environ.get("HYPERP_CPU_NS_DTYPE", "fp32")
COMPARED_PRECISIONS = sorted({"fp32", MACHINE_NS_DTYPE})


def config(corpus, **overrides):
    return load_config(None, {**TINY, "data.path": str(corpus), **overrides})


def logged(run_dir: Path, key="loss") -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r[key] for r in records if key in r}


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_model_weights(run_dir)[0]


def radii(run_dir: Path) -> dict[str, torch.Tensor]:
    """The sphere radius of every MuonH/AdamH matrix of a run's last checkpoint, by weight name."""
    _, path = list_checkpoints(run_dir / "checkpoints")[-1]
    state = read_tensors(path, "optimizer.state.")
    return {key.removesuffix(".radius"): v for key, v in state.items() if key.endswith(".radius")}


def assert_equal_up_to_rounding(reference: Path, run: Path, ns_dtype: str) -> None:
    """Two runs that compute the same thing with reductions in another order, in Newton-Schulz
    precision ``ns_dtype``: every logged loss and every final weight within that precision's
    measured spread, the same sphere radii, and every sphere matrix exactly on its sphere."""
    spread = SPREAD[ns_dtype]
    for key in ("loss", "val_loss"):
        one, two = logged(reference, key), logged(run, key)
        assert one.keys() == two.keys()
        for step in one:
            assert two[step] == pytest.approx(one[step], rel=spread.loss), (key, step)
    expected, got = final_weights(reference), final_weights(run)
    assert expected.keys() == got.keys()
    for name, want in expected.items():
        drift = (got[name] - want).norm() / want.norm()
        assert drift <= spread.weights, (name, drift.item())
    expected_radii, got_radii = radii(reference), radii(run)
    assert expected_radii.keys() == got_radii.keys() and expected_radii
    for name, radius in got_radii.items():  # fixed at the first step, whatever the sharding
        torch.testing.assert_close(radius, expected_radii[name], rtol=1e-6, atol=0)
        matrices = got[name].reshape(-1, *got[name].shape[-2:])  # an expert bank: one per slice
        torch.testing.assert_close(matrices.norm(dim=(-2, -1)), radius, rtol=1e-5, atol=0)


def assert_compiles_like_eager(model, tokens, fullgraph: bool = False) -> None:
    """What train.compile needs from a model: the same loss and gradients compiled as eager.
    aot_eager traces as inductor does without generating C++ code (minutes on a busy 2-core
    machine; the slow tests run inductor itself)."""
    eager = model(tokens[:, :-1], tokens[:, 1:]).loss
    eager.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=fullgraph)
    loss = compiled(tokens[:, :-1], tokens[:, 1:]).loss
    loss.backward()
    torch.testing.assert_close(loss, eager)
    for grad, p in zip(grads, model.parameters()):
        torch.testing.assert_close(p.grad, grad)


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
