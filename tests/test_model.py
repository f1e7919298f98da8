"""Dense model: shapes, parameter counts (docs/method.md §4), init, roles, causality, attention math."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import hyperp.monitor
from hyperp.model import ModelConfig, ModelOutput, Transformer
from hyperp.model.transformer import apply_rope, rope_tables
from hyperp.optim.roles import Role, assign_roles


def tiny(**overrides) -> ModelConfig:
    values = dict(depth=2, width=32, head_dim=8, n_kv_heads=2, vocab_size=64, context=16)
    values.update(overrides)
    return ModelConfig(**values)


def test_defaults_reproduce_the_paper_shapes():
    config = ModelConfig()
    assert (config.depth, config.width, config.n_heads, config.n_kv_heads) == (8, 1024, 16, 4)
    assert config.attention_width == 2 * config.width
    assert config.mlp_hidden == 4 * config.width
    assert config.residual_multiplier == pytest.approx(1 / 4)
    assert config.softmax_scale == pytest.approx(1 / math.sqrt(128))
    d24 = ModelConfig(depth=24)
    assert (d24.width, d24.n_heads) == (3072, 48)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(width=36, head_dim=16), "multiple of model.head_dim"),
        (dict(n_heads=6, n_kv_heads=4), "multiple of model.n_kv_heads"),
        (dict(head_dim=7, n_heads=2, n_kv_heads=1), "even number"),
        (dict(moe_sparsity=2, moe_granularity=3), "granularity that divides"),
        (dict(moe_sparsity=4, moe_granularity=1, moe_shared_expert=True), "moe_granularity >= 2"),
        (dict(head_init_rule="sqrt"), "head_init_rule"),
        (dict(depth=0), "depth"),
    ],
)
def test_bad_configs_raise_clear_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny(**overrides)


def test_a_model_needs_a_vocabulary():
    with pytest.raises(ValueError, match=r"model.vocab_size is not set"):
        ModelConfig(depth=2).num_params()


def test_derived_shape_is_set_once_and_cannot_go_stale():
    import dataclasses

    config = ModelConfig(depth=4, head_dim=64)
    assert (config.width, config.n_heads) == (512, 16)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.depth = 8  # would leave width and heads those of depth 4
    deeper = dataclasses.replace(config, depth=8, width=None, n_heads=None)
    assert (deeper.width, deeper.n_heads) == (1024, 32)
    assert dataclasses.replace(config, depth=8).width == 512  # given: kept as it was


def test_from_dict_rejects_unknown_keys():
    assert ModelConfig.from_dict({"depth": 2, "width": 32, "head_dim": 8}).width == 32
    with pytest.raises(ValueError, match="unknown model config keys"):
        ModelConfig.from_dict({"depth": 2, "widht": 32})


@pytest.mark.parametrize("depth", [8, 12, 16, 20, 24])
def test_dense_param_count_is_methods_N_plus_the_terms_it_ignores(depth):
    config = ModelConfig(depth=depth, vocab_size=32000)
    n, hs, heads = config.width, config.head_dim, config.n_heads
    # docs/method.md §4 counts MLP, q/k/v/o, embedding and head; it ignores the attention gate
    # (n x H per block), the block norms (2n), the QK-norm gains (2 hs) and the final norm (n).
    ignored = depth * (n * heads + 2 * n + 2 * hs) + n
    assert config.num_params() == config.scale().params + ignored
    assert config.num_params(active_only=True) == config.num_params()
    # The ignored terms are tiny: < 0.2% of N at every paper scale.
    assert ignored / config.scale().params < 2e-3


def test_paper_moe_totals_s8k8():
    # The paper's s8k8 models: 0.91B at d8 and 2.95B at d12 (computed, not allocated).
    assert (
        round(
            ModelConfig(depth=8, moe_sparsity=8, moe_granularity=8, vocab_size=32000).num_params()
            / 1e9,
            2,
        )
        == 0.91
    )
    assert (
        round(
            ModelConfig(depth=12, moe_sparsity=8, moe_granularity=8, vocab_size=32000).num_params()
            / 1e9,
            2,
        )
        == 2.95
    )
    # k active experts of hidden 4n/k cost one dense MLP: active = dense + router.
    moe = ModelConfig(depth=8, moe_sparsity=8, moe_granularity=8, vocab_size=32000)
    dense = ModelConfig(depth=8, vocab_size=32000)
    assert moe.num_params(active_only=True) == dense.num_params() + 8 * 1024 * 64


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        dict(qk_norm=False, gated_attention=False),
        dict(moe_sparsity=2, moe_granularity=4),
        dict(moe_sparsity=2, moe_granularity=4, moe_shared_expert=True),
    ],
)
def test_analytic_count_equals_allocated_count(overrides):
    config = tiny(**overrides)
    assert Transformer(config).num_params() == config.num_params()


def test_the_model_names_every_parameters_role():
    model = Transformer(tiny(moe_sparsity=2, moe_granularity=2, moe_shared_expert=True))
    named = model.parameter_roles()
    assert sorted(named) == sorted(name for name, _ in model.named_parameters())
    roles = {name: spec.role for name, spec in named.items()}
    assert roles["head.weight"] is Role.HEAD
    assert roles["embedding.weight"] is Role.EMBEDDING
    assert roles["final_norm.weight"] is Role.VECTOR
    assert roles["blocks.0.attn.q_norm.weight"] is Role.VECTOR
    for name in (
        "attn.q",
        "attn.k",
        "attn.v",
        "attn.o",
        "attn.gate",
        "mlp.router",
        "mlp.shared.up",
    ):
        assert roles[f"blocks.1.{name}.weight"] is Role.MATRIX
    for bank in ("w_gate", "w_up", "w_down"):
        assert roles[f"blocks.0.mlp.{bank}"] is Role.MATRIX
    infos = {info.name: info for info in assign_roles(model)}
    assert all(info.reason == "set by the model" for info in infos.values())
    assert infos["blocks.0.mlp.w_down"].layout == "batch"


def test_initialization_sets_the_radii():
    torch.manual_seed(0)
    config = tiny(width=64, head_dim=16, vocab_size=256)
    model = Transformer(config)
    q = model.blocks[0].attn.q.weight
    assert q.abs().max() <= 1 / math.sqrt(64)
    # U(-1/sqrt(fan_in), 1/sqrt(fan_in)) gives R = ||W||_F ~ sqrt(fan_out / 3) (docs/method.md §2.3).
    assert q.norm().item() == pytest.approx(math.sqrt(q.shape[0] / 3), rel=0.05)
    assert model.head.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.embedding.weight.std().item() == pytest.approx(1e-4, rel=0.05)
    assert torch.equal(model.blocks[1].mlp_norm.weight, torch.ones(64))
    # Expert slices: one sphere each, radius sqrt(fan_out / 3).
    moe = Transformer(tiny(width=64, head_dim=16, moe_sparsity=2, moe_granularity=2)).blocks[0].mlp
    radii = moe.w_down.flatten(1).norm(dim=1)
    assert torch.allclose(radii, torch.full_like(radii, math.sqrt(64 / 3)), rtol=0.1)
    # reset_parameters redraws everything (the weights change, the law does not).
    before = q.detach().clone()
    model.reset_parameters()
    assert not torch.equal(before, q)


def test_head_init_width_rule():
    fixed = tiny(width=64, head_dim=16, head_init_std=0.02, base_width=32)
    inverse = tiny(
        width=64, head_dim=16, head_init_std=0.02, base_width=32, head_init_rule="inverse_width"
    )
    assert fixed.head_std == 0.02
    assert inverse.head_std == pytest.approx(0.01)
    torch.manual_seed(0)
    assert Transformer(inverse).head.weight.std().item() == pytest.approx(0.01, rel=0.05)


@pytest.mark.parametrize("overrides", [{}, dict(moe_sparsity=2, moe_granularity=2)])
def test_causality(overrides):
    torch.manual_seed(0)
    model = Transformer(tiny(**overrides)).eval()
    tokens = torch.randint(0, 64, (2, 12))
    changed = tokens.clone()
    position = 7
    changed[:, position] = (changed[:, position] + 5) % 64
    with torch.no_grad():
        a = model(tokens).logits
        b = model(changed).logits
    # Equal up to float rounding: in an MoE the changed token can regroup the expert batches,
    # which reorders sums inside the matmuls (differences ~1e-8, far below the tolerance).
    torch.testing.assert_close(a[:, :position], b[:, :position], rtol=1e-6, atol=1e-7)
    assert (a[:, position:] - b[:, position:]).abs().amax(dim=-1).min() > 1e-4


def reference_attention(attn, x, config):
    """The attention branch written out with an explicit softmax, for comparison."""
    batch, length, _ = x.shape
    heads, kv_heads, hs = config.n_heads, config.n_kv_heads, config.head_dim
    q = (x @ attn.q.weight.T).view(batch, length, heads, hs)
    k = (x @ attn.k.weight.T).view(batch, length, kv_heads, hs)
    v = (x @ attn.v.weight.T).view(batch, length, kv_heads, hs)

    def rms(t, gain):
        return t / torch.sqrt(t.pow(2).mean(-1, keepdim=True) + config.norm_eps) * gain

    if config.qk_norm:
        q, k = rms(q, attn.q_norm.weight), rms(k, attn.k_norm.weight)
    cos, sin = rope_tables(hs, length, config.rope_base)
    q = apply_rope(q.transpose(1, 2), cos, sin)
    k = apply_rope(k.transpose(1, 2), cos, sin).repeat_interleave(heads // kv_heads, dim=1)
    v = v.transpose(1, 2).repeat_interleave(heads // kv_heads, dim=1)
    scores = q @ k.transpose(-2, -1) * (math.sqrt(config.base_head_dim) / hs)
    mask = torch.ones(length, length, dtype=torch.bool).triu(1)
    weights = torch.softmax(scores.masked_fill(mask, float("-inf")), dim=-1)
    y = (weights @ v).transpose(1, 2)
    if config.gated_attention:
        y = y * torch.sigmoid(x @ attn.gate.weight.T).unsqueeze(-1)
    return y.reshape(batch, length, heads * hs) @ attn.o.weight.T


@pytest.mark.parametrize(
    "switches",
    [{}, dict(qk_norm=False), dict(gated_attention=False), dict(n_kv_heads=4, n_heads=4)],
)
def test_attention_matches_explicit_reference(switches):
    torch.manual_seed(0)
    values = dict(width=32, head_dim=8, n_kv_heads=2, base_head_dim=4)  # scale sqrt(4)/8
    config = tiny(**{**values, **switches})
    model = Transformer(config)
    attn = model.blocks[0].attn
    assert (attn.q_norm is None) == (not config.qk_norm)
    assert (attn.gate is None) == (not config.gated_attention)
    with torch.no_grad():
        if config.qk_norm:
            attn.q_norm.weight.uniform_(0.5, 1.5)  # non-trivial gains
        x = torch.randn(2, 10, 32)
        cos, sin = model.rope_cos[:10], model.rope_sin[:10]
        ours = attn(x, cos, sin)
        expected = reference_attention(attn, x, config)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)


def test_rope_preserves_norms_and_depends_on_relative_position():
    cos, sin = rope_tables(8, 16, 10000.0)
    q, k = torch.randn(8), torch.randn(8)
    rotated = apply_rope(q.expand(16, 8), cos, sin)
    torch.testing.assert_close(rotated.norm(dim=-1), q.norm().expand(16))
    keys = apply_rope(k.expand(16, 8), cos, sin)
    # q_i . k_j depends on i - j only.
    torch.testing.assert_close(rotated[5] @ keys[2], rotated[9] @ keys[6], rtol=1e-5, atol=1e-5)


def test_depth_mup_multiplies_each_branch_by_inverse_sqrt_2L():
    torch.manual_seed(0)
    tokens = torch.randint(0, 64, (2, 8))
    rms = {}
    for depth_mup in (True, False):
        torch.manual_seed(1)
        model = Transformer(tiny(depth=3, depth_mup=depth_mup))
        with torch.no_grad(), hyperp.monitor.collect(model) as stats:
            model(tokens)
        rms[depth_mup] = stats.summary()["attn_branch_rms/0"]
    # Layer 0's branch input is the same either way; only the multiplier differs.
    assert rms[True] / rms[False] == pytest.approx(1 / math.sqrt(6), rel=1e-5)


def test_logit_multiplier_and_loss():
    torch.manual_seed(0)
    tokens = torch.randint(0, 64, (2, 8))
    torch.manual_seed(1)
    base = Transformer(tiny())
    torch.manual_seed(1)
    scaled = Transformer(tiny(logit_multiplier=0.25))
    out: ModelOutput = base(tokens, tokens)
    torch.testing.assert_close(scaled(tokens).logits, 0.25 * out.logits)
    assert out.logits.shape == (2, 8, 64)
    assert out.aux_loss.item() == 0.0
    expected = F.cross_entropy(out.logits.flatten(0, 1), tokens.flatten())
    torch.testing.assert_close(out.lm_loss, expected)
    torch.testing.assert_close(out.loss, out.lm_loss)
    assert base(tokens).loss is None


def test_moe_loss_includes_the_balancing_loss():
    torch.manual_seed(0)
    model = Transformer(tiny(depth=3, moe_sparsity=2, moe_granularity=2))
    tokens = torch.randint(0, 64, (4, 16))
    out = model(tokens, tokens)
    # Three MoE layers, each at least gamma (= 0.1 at perfect balance, more otherwise).
    assert out.aux_loss.item() >= 3 * 0.1 - 1e-6
    torch.testing.assert_close(out.loss, out.lm_loss + out.aux_loss)
    out.loss.backward()
    assert model.blocks[0].mlp.router.weight.grad.abs().sum() > 0


def test_too_long_sequence_is_a_clear_error():
    model = Transformer(tiny(context=8))
    with pytest.raises(ValueError, match=r"exceeds model\.context"):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_config_round_trips_through_a_dict():
    config = tiny(moe_sparsity=2, moe_granularity=4, head_init_rule="inverse_width")
    again = ModelConfig.from_dict(config.to_dict())
    assert again == config
    assert again.n_heads == config.n_heads == 8  # resolved defaults are kept
