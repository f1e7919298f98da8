"""Small trained runs shared by the tests of load_run, generate, eval, export and plot.

Each run is trained once per test session (a few seconds on 2 cores) into a session-wide
temporary directory, on a small real corpus (standard-library modules, BPE vocabulary 512).
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

from hyperp.train import load_config
from hyperp.train.trainer import train
from support import prepare_small_corpus

TINY = {
    "model.depth": 2,
    "model.width": 32,
    "model.head_dim": 16,
    "model.n_kv_heads": 2,
    "model.context": 48,
    "model.head_init_rule": "inverse_width",
    "model.base_width": 64,
    "train.batch_size": 8,
    "train.seq_len": 48,
    "train.log_every": 1,
    "train.eval_every": 5,
    "train.eval_batches": 2,
    "train.checkpoint_every": 5,
    "train.progress": False,
    "train.monitor_every": 3,
    "train.steps": 10,
    "optim.base_lr": 0.05,
}

# The architectures the export must cover (docs/method.md §3, §3.1).
VARIANTS = {
    # the paper's dense variant: gated attention + QK-norm
    "dense_ga": {},
    # dense without gated attention (a stock Qwen3 decoder); a logit multiplier to fold
    "dense_plain": {"model.gated_attention": False, "model.logit_multiplier": 0.75},
    # no QK-norm either: a stock Llama decoder
    "dense_llama": {"model.gated_attention": False, "model.qk_norm": False},
    # MoE with SqrtGate and a shared expert
    "moe": {
        "model.moe_sparsity": 2,
        "model.moe_granularity": 4,
        "model.moe_shared_expert": True,
    },
}

_ROOT: list[Path] = []
_RUNS: dict[str, Path] = {}


def _root() -> Path:
    if not _ROOT:
        _ROOT.append(Path(tempfile.mkdtemp(prefix="hyperp-serve-tests-")))
        atexit.register(shutil.rmtree, _ROOT[0], ignore_errors=True)
    return _ROOT[0]


def corpus() -> Path:
    directory = _root() / "corpus"
    if not (directory / "meta.json").is_file():
        prepare_small_corpus(directory)
    return directory


def trained_run(name: str, **overrides) -> Path:
    """The run directory of ``VARIANTS[name]`` (plus ``overrides``), trained on first use."""
    key = name + "".join(f",{k}={v}" for k, v in sorted(overrides.items()))
    if key not in _RUNS:
        values = {**TINY, "data.path": str(corpus()), **VARIANTS[name], **overrides}
        out = _root() / "runs" / key.replace("=", "_").replace(",", "_")
        train(load_config(None, values), out)
        _RUNS[key] = out
    return _RUNS[key]
