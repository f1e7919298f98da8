import json

import pytest

from hyperp.cli import main
from hyperp.rules import PAPER_BASE, ModelScale, TransferRule, lr_schedule, transfer

PAPER_DEPTHS = (8, 12, 16, 20, 24)
PAPER_FLOPS = (2.136e19, 1.491e20, 6.591e20, 2.186e21, 5.961e21)
PAPER_MULTIPLIERS = (1.000, 0.591, 0.400, 0.293, 0.226)


@pytest.mark.parametrize(
    "depth,flops,multiplier", list(zip(PAPER_DEPTHS, PAPER_FLOPS, PAPER_MULTIPLIERS))
)
def test_paper_figures(depth, flops, multiplier):
    result = transfer(ModelScale(depth=depth))
    assert result.flops == pytest.approx(flops, rel=5e-4)
    assert round(result.lr_multiplier, 3) == multiplier
    assert result.tokens_per_param == pytest.approx(50.0, rel=0.01)  # docs/method.md §4: about 50


def test_paper_shapes():
    assert PAPER_BASE.width == 1024 and PAPER_BASE.n_heads == 16
    d24 = ModelScale(depth=24)
    assert d24.width == 3072 and d24.n_heads == 48
    # N(d) by hand for d8: 12n²d + 2Vn + 2nd·H·hs + 2nd·Hkv·hs
    n, d = 1024, 8
    assert PAPER_BASE.params == 12 * n * n * d + 2 * 32000 * n + 2 * n * d * 2048 + 2 * n * d * 512


def test_each_factor_of_the_rule():
    rule = TransferRule(base_lr=0.01)
    base = transfer(PAPER_BASE, rule=rule, tokens=rule.base_tokens)
    assert base.lr == pytest.approx(0.01)
    assert transfer(
        PAPER_BASE, rule=rule, tokens=rule.base_tokens, batch=4 * rule.base_batch
    ).lr == pytest.approx(0.02)
    assert transfer(ModelScale(depth=32), rule=rule, tokens=rule.base_tokens).lr == pytest.approx(
        0.005
    )
    assert transfer(PAPER_BASE, rule=rule, tokens=2 * rule.base_tokens).lr == pytest.approx(
        0.01 * 2**-0.32
    )
    # no width factor: a wider model at the same depth and tokens keeps the LR
    assert transfer(
        ModelScale(depth=8, width=4096), rule=rule, tokens=rule.base_tokens
    ).lr == pytest.approx(0.01)
    muon = TransferRule.for_method("muon", base_lr=0.01)
    assert transfer(PAPER_BASE, rule=muon, tokens=8 * muon.base_tokens).lr == pytest.approx(0.01)
    small = TransferRule(base_lr=0.02, base_tokens=1e7).with_base(depth=2, width=64)
    assert small.base.width == 64 and transfer(small.base, rule=small).tokens == pytest.approx(1e7)


def test_bad_inputs():
    with pytest.raises(ValueError, match="depth"):
        ModelScale(depth=0)
    with pytest.raises(ValueError, match="n_heads explicitly"):
        ModelScale(depth=1, width=100, head_dim=128)
    with pytest.raises(ValueError, match="base_lr"):
        TransferRule(base_lr=0)
    with pytest.raises(ValueError, match="unknown method"):
        TransferRule.for_method("sgd")


def test_schedule():
    assert lr_schedule(0, 100) == 1.0
    assert lr_schedule(99, 100) == pytest.approx(0.1)
    assert lr_schedule(49, 100) == pytest.approx(1 - 0.9 * 49 / 99)
    assert lr_schedule(0, 100, warmup_steps=10) == pytest.approx(0.1)
    assert lr_schedule(10, 100, warmup_steps=10) == 1.0
    with pytest.raises(ValueError):
        lr_schedule(0, 0)


def test_cli_table_and_json(capsys):
    assert main(["transfer", "--base-lr", "0.016", "--depth", "8", "12", "16", "20", "24"]) == 0
    table = capsys.readouterr().out
    assert "0.591" in table and "5.961e+21" in table
    assert main(["transfer", "--depth", "12", "--tokens", "1e9", "--batch", "2**20", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    target = data["targets"][0]
    assert target["tokens"] == 1e9 and target["batch"] == 2**20
    expected = 0.016 * 0.5**0.5 * (8 / 12) ** 0.5 * (1e9 / 10.4e9) ** -0.32
    assert target["lr"] == pytest.approx(expected)
    assert data["rule"]["token_exponent"] == -0.32


def test_cli_user_errors(capsys):
    assert main(["transfer", "--depth", "8", "12", "--tokens", "1e9", "2e9", "3e9"]) == 2
    assert "one per --depth" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["transfer", "--depth", "8", "--tokens", "lots"])
    assert "not a number" in capsys.readouterr().err
