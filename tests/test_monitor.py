"""Stability indicators (docs/method.md §5), each against a hand computation."""

from __future__ import annotations

import math

import pytest
import torch

import hyperp.monitor
from hyperp.model import ModelConfig, Transformer
from hyperp.monitor import StabilityStats, attention_lse, collect, outlier_fraction


def tiny(**overrides) -> ModelConfig:
    values = dict(depth=2, width=32, head_dim=8, n_kv_heads=2, vocab_size=64, context=16)
    values.update(overrides)
    return ModelConfig(**values)


def lse_by_hand(q, k, scale):
    """Plain Python loops: LSE over keys j <= i for every (batch, head, query)."""
    batch, heads, length, _ = q.shape
    group = heads // k.shape[1]
    out = torch.empty(batch, heads, length, dtype=torch.float64)
    for b in range(batch):
        for h in range(heads):
            for i in range(length):
                scores = [scale * float(q[b, h, i] @ k[b, h // group, j]) for j in range(i + 1)]
                top = max(scores)
                out[b, h, i] = top + math.log(sum(math.exp(s - top) for s in scores))
    return out


def test_attention_lse_equals_direct_computation_with_gqa():
    torch.manual_seed(0)
    q, k = torch.randn(2, 4, 6, 8), torch.randn(2, 2, 6, 8)
    ours = attention_lse(q, k, 0.7)
    torch.testing.assert_close(ours.double(), lse_by_hand(q, k, 0.7), rtol=1e-5, atol=1e-5)
    # The first query sees only itself: LSE = its own scaled score.
    torch.testing.assert_close(ours[:, :, 0], 0.7 * (q[:, :, 0] * k[:, [0, 0, 1, 1], 0]).sum(-1))


def test_attention_lse_chunking_is_exact(monkeypatch):
    torch.manual_seed(0)
    q, k = torch.randn(1, 2, 13, 4), torch.randn(1, 2, 13, 4)
    whole = attention_lse(q, k, 0.5)
    monkeypatch.setattr(hyperp.monitor, "_LSE_SCORE_ELEMENTS", 2 * 13 * 4)  # 4 query rows
    torch.testing.assert_close(attention_lse(q, k, 0.5), whole)


def test_model_attention_z_equals_hand_computation():
    torch.manual_seed(0)
    config = tiny(depth=1)
    model = Transformer(config)
    tokens = torch.randint(0, 64, (2, 5))
    with torch.no_grad(), collect(model) as stats:
        model(tokens)
        # Recompute q and k of layer 0 by hand from the weights.
        attn, x = model.blocks[0].attn, model.blocks[0].attn_norm(model.embedding(tokens))
        q = (x @ attn.q.weight.T).view(2, 5, config.n_heads, 8)
        k = (x @ attn.k.weight.T).view(2, 5, config.n_kv_heads, 8)
        q, k = attn.q_norm(q).transpose(1, 2), attn.k_norm(k).transpose(1, 2)
        cos, sin = model.rope_cos[:5], model.rope_sin[:5]
        from hyperp.model.transformer import apply_rope

        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    expected = lse_by_hand(q, k, config.softmax_scale).pow(2).mean().item()
    assert stats.summary()["attn_z/0"] == pytest.approx(expected, rel=1e-5)
    assert stats.summary()["attn_z"] == pytest.approx(expected, rel=1e-5)


def test_branch_rms_equals_hand_computation():
    torch.manual_seed(0)
    config = tiny(depth=2)
    model = Transformer(config)
    tokens = torch.randint(0, 64, (2, 6))
    with torch.no_grad(), collect(model) as stats:
        model(tokens)
    with torch.no_grad():
        block = model.blocks[0]
        x = model.embedding(tokens)
        cos, sin = model.rope_cos[:6], model.rope_sin[:6]
        attn_out = block.attn(block.attn_norm(x), cos, sin) / math.sqrt(4)
        x = x + attn_out
        mlp_out = block.mlp(block.mlp_norm(x)) / math.sqrt(4)
        residual = x + mlp_out
    summary = stats.summary()
    assert summary["residual_rms/0"] == pytest.approx(
        residual.pow(2).mean().sqrt().item(), rel=1e-5
    )
    assert summary["attn_branch_rms/0"] == pytest.approx(
        attn_out.pow(2).mean().sqrt().item(), rel=1e-5
    )
    assert summary["mlp_branch_rms/0"] == pytest.approx(
        mlp_out.pow(2).mean().sqrt().item(), rel=1e-5
    )
    # Model value: RMS over all branches of all layers.
    squares = [
        summary[f"{kind}_branch_rms/{layer}"] ** 2 for kind in ("attn", "mlp") for layer in (0, 1)
    ]
    assert summary["branch_rms"] == pytest.approx(math.sqrt(sum(squares) / 4))


def test_outlier_fraction_by_hand():
    h = torch.zeros(2, 100)
    h[0, 3] = 100.0  # mean 1, std 9.95: |100 - 1| = 99 > 5 std, |0 - 1| = 1 is not
    h[1] = torch.linspace(-1, 1, 100)  # a flat ramp has no 5-sigma element
    count, elements = outlier_fraction(h)
    assert (int(count), elements) == (1, 200)
    stats = StabilityStats()
    stats.record_block(0, torch.ones(3), torch.ones(3), h)
    assert stats.summary()["outlier_pct/0"] == pytest.approx(0.5)


def test_router_z_maxvio_and_load_fractions_by_hand():
    stats = StabilityStats()
    logits = torch.tensor([[0.0, math.log(3.0)], [1.0, 1.0]])
    stats.record_router(0, logits, torch.tensor([3.0, 1.0, 0.0, 0.0]))
    stats.record_router(1, logits, torch.tensor([2.0, 2.0, 2.0, 2.0]))
    summary = stats.summary()
    lse = [math.log(4.0), 1.0 + math.log(2.0)]
    assert summary["router_z/0"] == pytest.approx((lse[0] ** 2 + lse[1] ** 2) / 2)
    assert summary["maxvio/0"] == pytest.approx(2.0)  # (3 - 1) / 1
    assert summary["maxvio/1"] == 0.0  # perfect balance
    assert summary["maxvio"] == pytest.approx(1.0)
    assert summary["maxvio_max"] == pytest.approx(2.0)
    assert stats.load_fractions()[0] == [0.75, 0.25, 0.0, 0.0]
    assert (summary["load_min"], summary["load_max"]) == (0.0, 0.75)


def test_moe_model_reports_router_indicators():
    torch.manual_seed(0)
    model = Transformer(tiny(moe_sparsity=2, moe_granularity=2))
    tokens = torch.randint(0, 64, (2, 8))
    with torch.no_grad(), collect(model) as stats:
        model(tokens)
    fractions = stats.load_fractions()
    assert sorted(fractions) == [0, 1]
    assert sum(fractions[0]) == pytest.approx(1.0)
    counts = torch.tensor(fractions[0]) * 32  # 16 tokens x top-2
    expected = ((counts.max() - counts.mean()) / counts.mean()).item()
    assert stats.summary()["maxvio/0"] == pytest.approx(expected)
    assert stats.summary()["router_z"] > 0


def test_two_forwards_aggregate_like_one_batch():
    torch.manual_seed(0)
    model = Transformer(tiny())
    tokens = torch.randint(0, 64, (4, 8))
    with torch.no_grad(), collect(model) as whole:
        model(tokens)
    with torch.no_grad(), collect(model) as halves:
        model(tokens[:2])
        model(tokens[2:])
    for key, value in whole.summary().items():
        assert halves.summary()[key] == pytest.approx(value, rel=1e-5), key


def test_collection_only_inside_the_context():
    model = Transformer(tiny())
    tokens = torch.randint(0, 64, (1, 4))
    slots = [m for m in model.modules() if hasattr(m, "_hyperp_monitor")]
    assert len(slots) == 4  # two blocks and their attention modules
    with pytest.raises(RuntimeError, match="boom"), collect(model):
        assert all(m._hyperp_monitor is not None for m in slots)
        raise RuntimeError("boom")
    assert all(m._hyperp_monitor is None for m in slots)  # detached even after an error
    with collect(model) as stats:
        model(tokens)
    recorded = stats.summary()
    model(tokens)  # outside the context the stats object no longer receives anything
    assert stats.summary() == recorded
    with collect(model), pytest.raises(RuntimeError, match="do not nest"), collect(model):
        pass


def test_collect_rejects_models_without_monitoring_points():
    with pytest.raises(ValueError, match="no monitoring points"), collect(torch.nn.Linear(2, 2)):
        pass
