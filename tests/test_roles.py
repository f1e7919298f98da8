import math

import pytest
import torch
from torch import nn

from hyperp.optim import Role, assign_roles, build_optimizer, param_groups, set_role


class Block(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.ln = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, 2, batch_first=True)
        self.fc = nn.Linear(width, 4 * width)
        self.proj = nn.Linear(4 * width, width)


class HFStyleLM(nn.Module):
    """Hugging Face layout: transformer.wte, transformer.h.N, lm_head, get_output_embeddings()."""

    def __init__(self, vocab=64, width=16, depth=2, tied=False):
        super().__init__()
        self.transformer = nn.ModuleDict(
            {
                "wte": nn.Embedding(vocab, width),
                "wpe": nn.Embedding(32, width),
                "h": nn.ModuleList(Block(width) for _ in range(depth)),
                "ln_f": nn.LayerNorm(width),
            }
        )
        self.lm_head = nn.Linear(width, vocab, bias=False)
        if tied:
            self.lm_head.weight = self.transformer["wte"].weight

    def get_output_embeddings(self):
        return self.lm_head


def roles_by_name(model, **kw):
    return {info.name: info.role for info in assign_roles(model, **kw)}


def test_untied_hf_model_roles():
    roles = roles_by_name(HFStyleLM())
    assert roles["lm_head.weight"] is Role.HEAD
    assert roles["transformer.wte.weight"] is Role.EMBEDDING
    assert roles["transformer.wpe.weight"] is Role.EMBEDDING
    assert roles["transformer.h.0.attn.in_proj_weight"] is Role.MATRIX
    assert roles["transformer.h.0.attn.out_proj.weight"] is Role.MATRIX
    assert roles["transformer.h.1.fc.weight"] is Role.MATRIX
    assert roles["transformer.h.1.fc.bias"] is Role.VECTOR
    assert roles["transformer.h.0.attn.in_proj_bias"] is Role.VECTOR
    assert roles["transformer.ln_f.weight"] is Role.VECTOR
    assert sum(r is Role.HEAD for r in roles.values()) == 1


def test_tied_head_is_an_embedding_with_a_warning():
    model = HFStyleLM(tied=True)
    with pytest.warns(UserWarning, match="tied"):
        roles = roles_by_name(model)
    assert "lm_head.weight" not in roles  # one tensor, listed once under its first name
    assert roles["transformer.wte.weight"] is Role.EMBEDDING
    assert Role.HEAD not in roles.values()
    # the user can still put it on a sphere explicitly
    roles = roles_by_name(model, roles={"transformer.wte.weight": "head"})
    assert roles["transformer.wte.weight"] is Role.HEAD


def test_named_head_and_glob_overrides():
    model = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 8), nn.Linear(8, 10, bias=False))
    roles = roles_by_name(model, head="2")
    assert roles["2.weight"] is Role.HEAD and roles["1.weight"] is Role.MATRIX
    roles = roles_by_name(model, head="2", roles={"1.*": "vector"})
    assert roles["1.weight"] is Role.VECTOR and roles["1.bias"] is Role.VECTOR
    with pytest.raises(ValueError, match="match no trainable parameter"):
        roles_by_name(model, roles={"3.weight": "matrix"})
    with pytest.raises(ValueError, match="names no submodule"):
        roles_by_name(model, head="lm_head")
    with pytest.raises(ValueError, match="unknown parameter role"):
        roles_by_name(model, roles={"1.weight": "sphere"})
    with pytest.raises(ValueError, match="needs a matrix"):
        roles_by_name(model, roles={"1.bias": "matrix"})


def test_roles_set_by_a_model_and_expert_banks_and_convs():
    class MoE(nn.Module):
        def __init__(self):
            super().__init__()
            self.router = nn.Linear(8, 4, bias=False)
            self.experts = nn.Parameter(torch.randn(4, 16, 8))
            self.conv = nn.Conv1d(8, 8, 3)
            self.scale = nn.Parameter(torch.ones(8, 8))
            set_role(self.experts, "matrix")
            set_role(self.scale, "vector")  # a 2-D parameter the model says is not a matrix

    infos = {i.name: i for i in assign_roles(MoE())}
    assert infos["experts"].role is Role.MATRIX and infos["experts"].layout == "batch"
    assert infos["conv.weight"].role is Role.MATRIX and infos["conv.weight"].layout == "flatten"
    assert infos["scale"].role is Role.VECTOR
    assert infos["router.weight"].reason == "2-D"
    groups = param_groups(MoE())
    layouts = {(g["role"], g["layout"]) for g in groups}
    assert ("matrix", "flatten") in layouts and ("matrix", "batch") in layouts


def test_conv_kernel_is_one_flattened_sphere():
    conv = nn.Conv2d(3, 6, 3)
    model = nn.Sequential(conv)
    opt = build_optimizer(model, "hyperp", lr=0.05)
    r0 = conv.weight.detach().norm()
    assert opt.radius(conv.weight).numel() == 1
    for _ in range(3):
        conv(torch.randn(2, 3, 8, 8)).square().mean().backward()
        opt.step()
        opt.zero_grad()
    torch.testing.assert_close(conv.weight.detach().norm(), r0, rtol=1e-5, atol=0)


def test_nothing_to_put_on_a_sphere():
    model = nn.Sequential(nn.Embedding(10, 4), nn.LayerNorm(4))
    with pytest.raises(ValueError, match="no matrix to put on a sphere"):
        build_optimizer(model, "hyperp")
    build_optimizer(model, "adamw")  # fine without a sphere


def test_build_optimizer_algorithms_and_table():
    model = HFStyleLM()
    expected = {
        "hyperp": {"matrix": "muonh", "head": "adamh", "embedding": "adam", "vector": "adam"},
        "muon": {"matrix": "muon", "head": "adam", "embedding": "adam", "vector": "adam"},
        "adamw": {"matrix": "adam", "head": "adam", "embedding": "adam", "vector": "adam"},
    }
    for method, table in expected.items():
        opt = build_optimizer(model, method, lr=0.01, depth_ratio=0.5, weight_decay=0.1)
        seen = {g["role"]: g["algorithm"] for g in opt.param_groups}
        assert seen == table
        lrs = {g["role"]: g["lr"] for g in opt.param_groups}
        if method == "adamw":
            assert lrs["matrix"] == pytest.approx(0.005) and lrs["head"] == pytest.approx(0.01)
        else:
            assert set(lrs.values()) == {0.01}
    opt = build_optimizer(model, "hyperp", lr=0.01)
    table = opt.describe()
    assert "lm_head.weight" in table and "adamh" in table
    head_line = next(line for line in table.splitlines() if line.startswith("lm_head.weight"))
    assert f"{model.lm_head.weight.norm().item():.4g}" in head_line
    n_params = len({id(p) for p in model.parameters()})
    assert len(table.splitlines()) == n_params + 2
    with pytest.raises(ValueError, match="unknown method"):
        build_optimizer(model, "sgd")


def test_one_scheduler_drives_every_group():
    model = HFStyleLM()
    opt = build_optimizer(model, "adamw", lr=0.01, depth_ratio=0.5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.1)
    ratios = {g["role"]: g["lr"] / g["initial_lr"] for g in opt.param_groups}
    assert all(r == pytest.approx(0.1) for r in ratios.values())
    del sched


def test_muon_scale_follows_the_stored_layout_of_gpt2_conv1d():
    # transformers' Conv1D stores its weight in x out (GPT-2's attention and MLP): the Muon
    # baseline's sqrt(fan_out/fan_in) must use out/in, not shape[0]/shape[1].
    pytest.importorskip("transformers")
    from transformers.pytorch_utils import Conv1D

    from hyperp.optim import Muon, assign_roles, build_optimizer, set_role

    class GPT2Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.c_fc = Conv1D(64, 16)  # 16 -> 64, weight 16 x 64
            self.c_proj = Conv1D(16, 64)  # 64 -> 16, weight 64 x 16
            self.linear = nn.Linear(16, 64, bias=False)  # 16 -> 64, weight 64 x 16

        def forward(self, x):
            return self.c_proj(self.c_fc(x))

    block = GPT2Block()
    infos = {info.name: info for info in assign_roles(block)}
    assert infos["c_fc.weight"].transposed and infos["c_proj.weight"].transposed
    assert not infos["linear.weight"].transposed
    lr = 0.01
    opt = build_optimizer(block, "muon", lr=lr)
    assert "matrix (in x out)" in opt.describe()
    for param in block.parameters():
        param.grad = torch.randn_like(param)
    before = {name: p.detach().clone() for name, p in block.named_parameters()}
    opt.step()

    def update(name):  # ||ΔW||_F = lr · sqrt(fan_out/fan_in) · ||O||_F, ||O||_F = sqrt(min dim)
        return (dict(block.named_parameters())[name].detach() - before[name]).norm().item()

    expected = lr * math.sqrt(64 / 16) * math.sqrt(16)  # a 16 -> 64 map, whatever its storage
    assert update("c_fc.weight") == pytest.approx(expected, rel=0.05)
    assert update("linear.weight") == pytest.approx(expected, rel=0.05)
    assert update("c_proj.weight") == pytest.approx(lr * math.sqrt(16 / 64) * 4, rel=0.05)
    # A model can say so itself, and overrides the detection.
    plain = nn.Linear(16, 64, bias=False)
    set_role(plain.weight, "matrix", transposed=True)
    assert assign_roles(nn.Sequential(plain))[0].transposed
    with pytest.raises(ValueError, match="transposed must be True or False"):
        Muon([nn.Parameter(torch.randn(4, 4))], transposed="yes")


def test_head_lr_sets_the_heads_own_lr_and_the_scheduler_drives_it():
    model = HFStyleLM()
    opt = build_optimizer(model, "hyperp", lr=0.01, head_lr=0.3)
    lrs = {g["role"]: g["lr"] for g in opt.param_groups}
    assert lrs.pop("head") == pytest.approx(0.3)
    assert set(lrs.values()) == {0.01}
    torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5)
    head = next(g for g in opt.param_groups if g["role"] == "head")
    assert head["lr"] == pytest.approx(0.15)
    with pytest.raises(ValueError, match="head_lr must be positive"):
        build_optimizer(model, "hyperp", lr=0.01, head_lr=0.0)


def test_the_trainer_gives_the_head_its_configured_lr(corpus, tmp_path):
    """optim.head_lr reaches the trainer's optimizer: equal to optim.lr it changes nothing (the
    same computation, bit for bit); ten times larger it changes the trained head."""
    from hyperp.train import load_config
    from hyperp.train.trainer import train
    from training import config, final_weights

    settings = {"optim.lr": 0.02, "train.steps": 3, "train.checkpoint_every": 3}
    runs = {}
    for name, head_lr in (("plain", None), ("same", 0.02), ("larger", 0.2)):
        extra = {} if head_lr is None else {"optim.head_lr": head_lr}
        train(config(corpus, **settings, **extra), tmp_path / name)
        runs[name] = final_weights(tmp_path / name)
    head = "head.weight"
    assert torch.equal(runs["plain"][head], runs["same"][head])
    assert not torch.equal(runs["plain"][head], runs["larger"][head])
    with pytest.raises(ValueError, match="optim.head_lr must be positive"):
        load_config(None, {"optim.head_lr": -1.0})


def test_roles_by_name_carry_layout_and_transposition():
    from hyperp.optim import ParamRole, role_map

    model = nn.Sequential(nn.Linear(8, 6, bias=False), nn.Linear(6, 8))
    model.register_parameter("bank", nn.Parameter(torch.randn(6, 2, 3)))
    roles = {
        "0.weight": {"role": "matrix", "transposed": True},  # a TOML-table form
        "bank": ParamRole("matrix", layout="flatten"),
        "1.bias": "vector",
    }
    infos = {info.name: info for info in assign_roles(model, roles=roles)}
    assert infos["0.weight"].transposed and infos["0.weight"].layout == "batch"
    assert infos["bank"].layout == "flatten" and not infos["bank"].transposed
    assert not infos["1.weight"].transposed and infos["1.weight"].reason == "2-D"
    # role_map resolves everything to plain data that feeds back unchanged.
    resolved = role_map(model, roles=roles)
    assert resolved["0.weight"] == ParamRole("matrix", "batch", True)
    assert resolved["bank"] == ParamRole("matrix", "flatten", False)
    assert role_map(model, roles=resolved) == resolved
    groups = {
        (g["layout"], g["transposed"]): g["param_names"] for g in param_groups(model, roles=roles)
    }
    assert groups[("flatten", False)] == ["bank"] and groups[("batch", True)] == ["0.weight"]
    for bad, message in [
        ({"role": "matrix", "layout": "rows"}, "layout must be 'batch' or 'flatten'"),
        ({"role": "matrix", "transposed": "yes"}, "transposed must be True or False"),
        ({"layout": "batch"}, "a role entry needs 'role'"),
        ("matrixx", "unknown parameter role"),
    ]:
        with pytest.raises(ValueError, match=message):
            assign_roles(model, roles={"0.weight": bad})


def test_a_models_own_role_mapping_is_used_and_set_role_still_wins():
    class Named(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4, bias=False)
            self.b = nn.Linear(4, 4, bias=False)

        def parameter_roles(self):
            return {"a.weight": {"role": "matrix", "transposed": True}, "b.weight": "head"}

    model = Named()
    infos = {info.name: info for info in assign_roles(model)}
    assert infos["a.weight"].transposed and infos["a.weight"].reason == "set by the model"
    assert infos["b.weight"].role is Role.HEAD
    set_role(model.b.weight, "vector")
    assert {i.name: i.role for i in assign_roles(model)}["b.weight"] is Role.VECTOR


def test_the_model_package_does_not_import_the_optimizer_package():
    import subprocess
    import sys

    code = (
        "import sys; from hyperp.model import ModelConfig, Transformer; "
        "Transformer(ModelConfig(depth=1, width=32, head_dim=16, vocab_size=32, context=8)); "
        "print(sorted(m for m in sys.modules if m.startswith('hyperp.optim')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
    # the roles themselves are plain data: no torch
    code = "import sys, hyperp.roles; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
