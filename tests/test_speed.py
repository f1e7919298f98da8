"""Training speed options: torch.compile, activation checkpointing per block, and the CPU's
autocast precision chosen by measurement."""

import pytest
import torch
import torch._inductor.config

from hyperp.model import ModelConfig, Transformer
from hyperp.model.transformer import checkpoint_blocks
from hyperp.train.trainer import _precision, train
from training import PIN_FP32, assert_compiles_like_eager, config, logged

QUICK = {**PIN_FP32, "train.steps": 3, "train.eval_every": 0, "train.monitor_every": 0,
         "train.checkpoint_every": 0}  # fmt: skip


def saved_bytes(model, tokens) -> int:
    """Bytes autograd keeps for backward during one forward."""
    total = 0

    def pack(tensor):
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(tokens[:, :-1], tokens[:, 1:]).loss
    loss.backward()
    return total


def test_checkpointed_blocks_keep_less_and_give_the_same_gradients():
    config_ = ModelConfig(depth=3, width=64, head_dim=16, vocab_size=128, context=32)
    tokens = torch.randint(0, 128, (4, 33), generator=torch.Generator().manual_seed(0))
    plain = Transformer(config_)
    checkpointed = Transformer(config_)
    checkpointed.load_state_dict(plain.state_dict())
    checkpoint_blocks(checkpointed)
    kept_plain, kept_checkpointed = saved_bytes(plain, tokens), saved_bytes(checkpointed, tokens)
    assert kept_checkpointed < 0.5 * kept_plain, (kept_checkpointed, kept_plain)
    for (name, a), b in zip(plain.named_parameters(), checkpointed.parameters()):
        assert torch.equal(a.grad, b.grad), name  # recomputation repeats the same arithmetic


def test_activation_checkpointing_gives_equal_losses(corpus, tmp_path):
    train(config(corpus, **QUICK), tmp_path / "plain")
    checkpointed = {**QUICK, "train.activation_checkpointing": True}
    train(config(corpus, **checkpointed), tmp_path / "checkpointed")
    assert logged(tmp_path / "plain") == logged(tmp_path / "checkpointed")


def test_model_compiles_as_one_graph_with_eager_results():
    # one graph (no breaks) forward and backward, and the same loss and gradients
    config_ = ModelConfig(depth=2, width=32, head_dim=16, n_kv_heads=2, vocab_size=96, context=16)
    tokens = torch.randint(0, 96, (4, 17), generator=torch.Generator().manual_seed(0))
    assert_compiles_like_eager(Transformer(config_), tokens, fullgraph=True)


@pytest.mark.slow
def test_compiled_training_tracks_eager(corpus, tmp_path, monkeypatch):
    # torch.compile (inductor, C++ on a CPU) fuses elementwise work, which rounds differently.
    monkeypatch.setattr(torch._inductor.config, "compile_threads", 1)
    train(config(corpus, **QUICK), tmp_path / "eager")
    train(config(corpus, **QUICK, **{"train.compile": True}), tmp_path / "compiled")
    eager, compiled = logged(tmp_path / "eager"), logged(tmp_path / "compiled")
    assert sorted(compiled) == [1, 2, 3]
    for step, loss in eager.items():
        assert compiled[step] == pytest.approx(loss, rel=1e-4), step


def test_cpu_autocast_is_chosen_by_measurement(tmp_path, monkeypatch):
    from hyperp.optim import precision

    def timer(times):
        return lambda dtype, budget: times[dtype]

    dtype, why = precision.choose_cpu_autocast_dtype(
        timer({torch.float32: 1.0, torch.bfloat16: 0.5})
    )
    assert dtype == torch.bfloat16 and "Training (autocast) runs in bf16" in why
    dtype, _ = precision.choose_cpu_autocast_dtype(timer({torch.float32: 0.1, torch.bfloat16: 2.0}))
    assert dtype == torch.float32
    # "auto" follows the choice on a CPU (fp32: no autocast); bf16 stays the default on CUDA.
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert _precision("auto", cpu, torch.bfloat16) == torch.bfloat16
    assert _precision("auto", cpu, None) is None and _precision("fp32", cpu, torch.bfloat16) is None
    assert _precision("auto", cuda) == torch.bfloat16
    # Measured once per machine and cached apart from Newton-Schulz's choice.
    monkeypatch.delenv(precision.AUTOCAST_VARIABLE, raising=False)
    monkeypatch.setenv("HYPERP_CACHE", str(tmp_path))
    calls = []
    monkeypatch.setattr(
        precision, "choose_cpu_autocast_dtype",
        lambda: calls.append(1) or (torch.bfloat16, "measured"),
    )  # fmt: skip
    precision.cpu_autocast_choice.cache_clear()
    try:
        assert precision.cpu_autocast_choice()[0] == torch.bfloat16
        precision.cpu_autocast_choice.cache_clear()
        dtype, why = precision.cpu_autocast_choice()
        assert dtype == torch.bfloat16 and "cached in" in why and len(calls) == 1
        assert [p.name.split("-")[1] for p in tmp_path.iterdir()] == ["autocast"]
    finally:
        precision.cpu_autocast_choice.cache_clear()
