"""Coordinate check of any module through forward hooks (hyperp.coordinates, hyperp check
--hf-config): a wrong init scale is flagged, the right one and the project's own family pass."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from hyperp.coordinates import coord_check_module, hf_factory, kind_of
from hyperp.model import ModelConfig, Transformer
from hyperp.model.coord_check import FLAT_SLOPE_TOLERANCE, markov_batches

pytest.importorskip("transformers")

WIDTHS = (32, 64, 128)
LLAMA = {
    "model_type": "llama",
    "hidden_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "vocab_size": 64,
    "max_position_embeddings": 64,
}  # HF initializes every linear layer N(0, 0.02^2) whatever its fan-in


def fan_in_llama(width: int, depth: int) -> nn.Module:
    """The same Llama family, hidden matrices re-initialized U(+-1/sqrt(fan_in)) (docs/method.md §2.3)."""
    model = hf_factory(LLAMA)(width, depth)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear) and module is not model.lm_head:
                bound = module.weight.shape[1] ** -0.5
                module.weight.uniform_(-bound, bound)
    return model


def test_kinds_group_layers():
    assert kind_of("model.layers.11.mlp.down_proj") == "model.layers.*.mlp.down_proj"
    assert kind_of("blocks.0") == "blocks.*" and kind_of("lm_head") == "lm_head"


def test_hf_factory_scales_width_and_depth_and_keeps_ratios():
    model = hf_factory(LLAMA)(128, 3)
    config = model.config
    assert (config.hidden_size, config.num_hidden_layers) == (128, 3)
    assert (config.num_attention_heads, config.num_key_value_heads) == (8, 4)  # head size 16
    assert config.intermediate_size == 256 and len(model.model.layers) == 3
    with pytest.raises(ValueError, match="not a multiple of the head dimension 16"):
        hf_factory(LLAMA)(40, 2)


def test_a_wrong_init_scale_is_flagged_and_the_right_one_passes():
    # Same architecture, same optimizer (HyperP); only the init differs. The spheres keep each
    # matrix's init norm, so N(0, 0.02^2) makes every projection's output grow like sqrt(width).
    options = dict(vocab_size=64, method="hyperp", steps=3)
    right = coord_check_module(fan_in_llama, WIDTHS, **options)
    wrong = coord_check_module(hf_factory(LLAMA), WIDTHS, **options)
    assert right.head_kinds == ["lm_head"]
    assert right.not_flat() == {}, right.table()
    flagged = {kind for _, kind in wrong.not_flat()}
    for kind in ("self_attn.q_proj", "self_attn.o_proj", "mlp.up_proj", "mlp.down_proj"):
        assert f"model.layers.*.{kind}" in flagged, wrong.table()
    assert wrong.slopes()[(2, "model.layers.*.mlp.down_proj")] > 2 * FLAT_SLOPE_TOLERANCE
    # the norms are flat either way: the check judges each kind on its own
    assert "model.layers.*.input_layernorm" not in flagged


def test_own_family_passes_through_hooks_alone():
    tokens = markov_batches(64, 4, 17, 4)

    def make(width, depth):
        config = ModelConfig(
            depth=depth, width=width, head_dim=16, n_kv_heads=2, vocab_size=64, context=16
        )
        return Transformer(config)

    result = coord_check_module(
        make,
        WIDTHS,
        batches=[t[:, :-1] for t in tokens],
        loss=lambda model, inputs: model(inputs, inputs.roll(-1, 1)).loss,
        method="hyperp",
        steps=3,
    )
    kinds = {kind for _, kind in result.slopes()}
    assert {"blocks.*.attn.q", "blocks.*.mlp.down", "blocks.*", "head"} <= kinds
    assert result.head_kinds == ["head"]
    assert result.not_flat() == {}, result.table()


def test_cli_checks_an_hf_config_with_sp_adamw(tmp_path, capsys):
    from hyperp.cli import main

    (tmp_path / "config.json").write_text(json.dumps(LLAMA))
    plot = tmp_path / "coord.png"
    argv = ["check", "--hf-config", str(tmp_path), "--method", "sp-adamw", "--steps", "2"]
    argv += ["--widths", "32", "64", "--depths", "1", "2", "--plot", str(plot), "--json"]
    assert main(argv) == 1
    data = json.loads(capsys.readouterr().out)
    assert (
        not data["flat"]
        and {"depth": 2, "kind": "model.layers.*.mlp.down_proj"} in data["not_flat"]
    )
    assert {entry["width"] for entry in data["depth_slopes"]} == {32, 64}
    assert plot.stat().st_size > 1000


@pytest.mark.parametrize(
    "config, message",
    [
        ({"hidden_size": 8}, "needs a 'model_type'"),
        ("missing.json", "no such file"),
        ("not-json", "is not a JSON config"),
    ],
)
def test_bad_hf_configs_are_one_line(tmp_path, capsys, config, message):
    from hyperp.cli import main

    path = tmp_path / "config.json"
    if config == "not-json":
        path.write_text("model_type = llama")
    elif isinstance(config, dict):
        path.write_text(json.dumps(config))
    else:
        path = tmp_path / config
    assert main(["check", "--hf-config", str(path), "--widths", "32", "64"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_model_without_a_loss_asks_for_one():
    with pytest.raises(TypeError, match="pass loss="):
        coord_check_module(
            lambda width, depth: nn.Linear(4, width), (8, 16), batches=[torch.randn(2, 4)] * 2,
            steps=1, method="sp-adamw",
        )  # fmt: skip
