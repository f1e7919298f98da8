"""Which settings give a stock Qwen3/Llama export, and ``hyperp export`` naming the setting that
ruled one out (the presets use gated attention, the paper's best dense variant)."""

from __future__ import annotations

import pytest

from hyperp.cli import main
from hyperp.model import ModelConfig
from hyperp.serve.export import stock_architecture, stock_blockers
from serve_support import trained_run

pytest.importorskip("transformers")


def test_stock_architecture_follows_from_two_settings():
    plain = dict(depth=2, width=64, head_dim=32, vocab_size=512)
    assert stock_architecture(ModelConfig(**plain, gated_attention=False)) == "Qwen3ForCausalLM"
    llama = ModelConfig(**plain, gated_attention=False, qk_norm=False)
    assert stock_architecture(llama) == "LlamaForCausalLM" and stock_blockers(llama) == ()
    (gated,) = stock_blockers(ModelConfig(**plain))  # the presets' default
    assert (
        gated.startswith("model.gated_attention = true")
        and "--model.gated_attention false" in gated
    )
    moe = ModelConfig(**plain, gated_attention=False, moe_sparsity=2, moe_granularity=2)
    (blocker,) = stock_blockers(moe)
    assert blocker.startswith("model.moe_sparsity = 2")
    both = ModelConfig(**plain, moe_sparsity=2, moe_granularity=2)
    assert len(stock_blockers(both)) == 2 and stock_architecture(both) is None


@pytest.mark.parametrize(
    "variant, expected",
    [("dense_ga", ["model.gated_attention = true"]), ("dense_plain", [])],
)
def test_export_names_the_setting_that_blocked_a_stock_export(variant, expected, tmp_path, capsys):
    capsys.readouterr()
    assert main(["export", str(trained_run(variant)), "--out", str(tmp_path / "hf")]) == 0
    lines = capsys.readouterr().out.splitlines()
    blocked = [line for line in lines if line.startswith("not a stock architecture because of")]
    assert len(blocked) == len(expected)
    for line, setting in zip(blocked, expected):
        assert setting in line and "--model.gated_attention false" in line
