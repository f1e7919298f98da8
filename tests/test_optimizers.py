import io
import math

import pytest
import torch
from torch import nn

from hyperp.optim import AdamH, Muon, MuonH, SphereError, build_optimizer, newton_schulz, set_role


class ExpertBank(nn.Module):
    """A tiny MoE-like layer: a 3-D bank of expert matrices, each slice its own sphere."""

    def __init__(self, experts: int, d_in: int, d_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(experts, d_out, d_in))
        bound = 1 / math.sqrt(d_in)
        nn.init.uniform_(self.weight, -bound, bound)
        with torch.no_grad():  # distinct radii per expert, so a shared sphere would show
            self.weight.mul_(torch.linspace(0.5, 2.0, experts)[:, None, None])
        set_role(self.weight, "matrix")

    def forward(self, x):  # x: (tokens, d_in); every expert sees every token, outputs summed
        return torch.einsum("td,eod->to", x, self.weight)


class TinyLM(nn.Module):
    def __init__(self, vocab=50, width=32, experts=4):
        super().__init__()
        self.embedding = nn.Embedding(vocab, width)
        self.up = nn.Linear(width, 2 * width, bias=False)
        self.mid = nn.Linear(2 * width, 2 * width, bias=False)
        self.down = nn.Linear(2 * width, width, bias=False)
        self.bank = ExpertBank(experts, width, width)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)
        nn.init.normal_(self.head.weight, std=0.02)

    def get_output_embeddings(self):
        return self.head

    def forward(self, tokens):
        h = self.embedding(tokens)
        h = h + self.down(torch.relu(self.mid(torch.relu(self.up(h)))))
        h = h + self.bank(h)
        return self.head(self.norm(h))


def lm_loss(model, batch):
    logits = model(batch[:-1])
    return nn.functional.cross_entropy(logits, batch[1:])


def batches(n, vocab=50, length=33, seed=1):
    """Sequences that follow a fixed random permutation (learnable), from random start tokens."""
    g = torch.Generator().manual_seed(seed)
    successor = torch.randperm(vocab, generator=torch.Generator().manual_seed(0))
    out = []
    for _ in range(n):
        seq = [int(torch.randint(0, vocab, (1,), generator=g))]
        for _ in range(length - 1):
            seq.append(int(successor[seq[-1]]))
        out.append(torch.tensor(seq))
    return out


def train(model, opt, data, scheduler=None):
    losses = []
    for batch in data:
        loss = lm_loss(model, batch)
        loss.backward()
        opt.step()
        opt.zero_grad()
        if scheduler is not None:
            scheduler.step()
        losses.append(loss.item())
    return losses


def sphere_tensors(model):
    return {n: p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n}


def test_norms_fixed_over_100_steps_and_loss_falls():
    model = TinyLM()
    before = {n: p.detach().clone() for n, p in sphere_tensors(model).items()}
    opt = build_optimizer(model, "hyperp", lr=0.02)
    losses = train(model, opt, batches(100))
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 - 0.3
    for name, p in sphere_tensors(model).items():
        if name == "bank.weight":  # one sphere per expert slice
            got, want = p.norm(dim=(1, 2)), before[name].norm(dim=(1, 2))
        else:
            got, want = p.norm(), before[name].norm()
        torch.testing.assert_close(got, want, rtol=1e-5, atol=0)
        assert not torch.equal(p, before[name]), f"{name} did not move"


def reference_muonh_step(weight, grad, buffer, radius, lr, momentum=0.95):
    """docs/method.md §2.3 written plainly for one matrix; returns (new weight, new buffer, moved W')."""
    buffer = momentum * buffer + grad
    direction = newton_schulz(momentum * buffer + grad)
    moved = weight - lr * radius / direction.norm() * direction
    return radius * moved / moved.norm(), buffer, moved


def test_matches_plain_reference_over_steps():
    # The batched, stacked implementation follows docs/method.md §2.3 written plainly, step after step,
    # and every reference step moves the matrix by exactly lr·R before the retraction.
    torch.manual_seed(3)
    weight = nn.Parameter(torch.randn(24, 40) * 0.1)
    radius = weight.detach().norm()
    opt = MuonH([weight], lr=0.05)
    w_ref, buffer = weight.detach().clone(), torch.zeros_like(weight)
    for _ in range(20):
        target = torch.randn(40, 24)
        grad = (weight @ target - torch.eye(24)).detach() @ target.T * 2
        weight.grad = grad.clone()
        w_prev = w_ref
        w_ref, buffer, moved = reference_muonh_step(w_ref, grad, buffer, radius, 0.05)
        torch.testing.assert_close((moved - w_prev).norm() / radius, torch.tensor(0.05))
        opt.step()
        torch.testing.assert_close(weight.detach(), w_ref, rtol=2e-5, atol=2e-6)


def test_relative_step_equals_lr_from_state():
    # Direct check on the optimizer: undo the retraction with the known direction.
    torch.manual_seed(4)
    weight = nn.Parameter(torch.randn(16, 16))
    w0 = weight.detach().clone()
    radius = w0.norm()
    opt = MuonH([weight], lr=0.1, momentum=0.0)
    grad = torch.randn(16, 16)
    weight.grad = grad
    opt.step()
    direction = newton_schulz(grad)
    unit = direction / direction.norm()
    # W_new = R·(W0 - lr·R·unit)/||…||, and no other relative step size reproduces it
    moved = w0 - 0.1 * radius * unit
    torch.testing.assert_close(weight.detach(), radius * moved / moved.norm(), rtol=1e-5, atol=1e-6)
    for wrong in (0.05, 0.2):
        moved = w0 - wrong * radius * unit
        assert (weight.detach() - radius * moved / moved.norm()).norm() > 1e-3 * radius


def test_per_expert_radii_versus_tensor_sphere():
    results = {}
    for sphere in ("matrix", "tensor"):
        torch.manual_seed(0)
        model = TinyLM()
        r0 = model.bank.weight.detach().norm(dim=(1, 2)).clone()
        total0 = model.bank.weight.detach().norm()
        opt = build_optimizer(model, "hyperp", lr=0.05, sphere=sphere)
        train(model, opt, batches(30))
        r = model.bank.weight.detach().norm(dim=(1, 2))
        results[sphere] = (r0, r)
        torch.testing.assert_close(model.bank.weight.detach().norm(), total0, rtol=1e-5, atol=0)
        assert opt.radius(model.bank.weight).numel() == (4 if sphere == "matrix" else 1)
    r0, r = results["matrix"]
    torch.testing.assert_close(r, r0, rtol=1e-5, atol=0)
    r0, r = results["tensor"]
    assert (r / r0 - 1).abs().max() > 1e-3  # slices exchange norm on a whole-tensor sphere


def run_with_decay(optimizer_class, lr, weight_decay, steps=10, **options):
    """A two-matrix regression net (every parameter a matrix) trained on fixed data."""
    torch.manual_seed(7)
    w1 = nn.Parameter(torch.randn(32, 16) / 4)
    w2 = nn.Parameter(torch.randn(8, 32) / 6)
    x, y = torch.randn(64, 16), torch.randn(64, 8)
    opt = optimizer_class([w1, w2], lr=lr, weight_decay=weight_decay, **options)
    for _ in range(steps):
        loss = (torch.tanh(x @ w1.T) @ w2.T - y).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
    return torch.cat([w1.detach().flatten(), w2.detach().flatten()])


def test_weight_decay_is_second_order_on_the_sphere():
    # The trajectory change caused by decay λ shrinks like lr² for MuonH (ratio ≈ 4 when the lr
    # halves): docs/method.md §2.3. Without a sphere, decay scaled by the lr (decoupled) acts at first order (ratio
    # ≈ 2) and the baseline's independent decay does not shrink with the lr at all (ratio ≈ 1).
    # Newton-Schulz in fp32: bf16 rounds the update far above a second-order change.
    def ratio(optimizer_class, **options):
        options["ns_dtype"] = "fp32"

        def change(lr):
            with_decay = run_with_decay(optimizer_class, lr, 0.1, **options)
            return (with_decay - run_with_decay(optimizer_class, lr, 0.0, **options)).norm().item()

        return change(0.02) / change(0.01)

    assert 3.8 < ratio(MuonH) < 4.2
    assert 1.8 < ratio(Muon, decay="decoupled") < 2.2
    assert 0.9 < ratio(Muon, decay="independent") < 1.1


def fresh(method="hyperp", lr=0.03):
    torch.manual_seed(11)
    model = TinyLM()
    opt = build_optimizer(model, method, lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 - 0.9 * s / 40)
    return model, opt, sched


@pytest.mark.parametrize("method", ["hyperp", "muon", "adamw"])
def test_resume_is_bit_identical(method):
    data = batches(40, seed=9)
    model_straight, opt_straight, sched_straight = fresh(method)
    straight = train(model_straight, opt_straight, data, sched_straight)

    model, opt, sched = fresh(method)
    first = train(model, opt, data[:17], sched)
    buffer = io.BytesIO()
    torch.save(
        {"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}, buffer
    )
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    torch.manual_seed(999)  # a different init: everything must come from the checkpoint
    model2 = TinyLM()
    opt2 = build_optimizer(model2, method, lr=0.03, weight_decay=0.05)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: 1 - 0.9 * s / 40)
    model2.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["opt"])
    sched2.load_state_dict(saved["sched"])
    second = train(model2, opt2, data[17:], sched2)

    assert first + second == straight
    for (name, a), b in zip(model_straight.named_parameters(), model2.parameters()):
        assert torch.equal(a, b), name
    if method == "hyperp":
        torch.testing.assert_close(
            opt2.radius(model2.up.weight), opt_straight.radius(model_straight.up.weight)
        )


def test_matches_torch_muon_in_compatible_mode():
    torch.manual_seed(2)
    layers = [
        nn.Linear(48, 96, bias=False),
        nn.Linear(96, 48, bias=False),
        nn.Linear(48, 48, bias=False),
    ]
    ours = [nn.Parameter(layer.weight.detach().clone()) for layer in layers]
    theirs = [nn.Parameter(layer.weight.detach().clone()) for layer in layers]
    opt_ours = Muon.like_torch(ours, lr=0.02, weight_decay=0.1)
    opt_theirs = torch.optim.Muon(theirs, lr=0.02, weight_decay=0.1)
    for _ in range(5):
        grads = [torch.randn_like(p) for p in ours]
        for p, q, g in zip(ours, theirs, grads):
            p.grad, q.grad = g.clone(), g.clone()
        opt_ours.step()
        opt_theirs.step()
    for p, q in zip(ours, theirs):
        # bf16 Newton-Schulz: both sides round differently at ~3 significant digits
        torch.testing.assert_close(p, q, rtol=0, atol=2e-3)
        assert (p - q).norm() / q.norm() < 5e-3


def test_muon_baseline_independent_decay_follows_schedule():
    p = nn.Parameter(torch.randn(8, 8))
    opt = Muon([p], lr=0.1, weight_decay=0.2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5)
    p.grad = torch.zeros(8, 8)  # zero direction: only decay acts
    before = p.detach().clone()
    opt.step()
    # λ_t = 0.2 · (0.05 / 0.1) = 0.1
    torch.testing.assert_close(p.detach(), before * 0.9)
    del sched


def test_zero_matrix_is_refused():
    with pytest.raises(SphereError, match="no sphere"):
        MuonH([nn.Parameter(torch.zeros(4, 4))])
    layer = nn.Linear(4, 4, bias=False)
    nn.init.zeros_(layer.weight)
    with pytest.raises(SphereError, match=r"weight.*kaiming"):
        build_optimizer(nn.Sequential(layer), "hyperp")


def test_adamh_keeps_head_norm_and_moves_lr():
    head = nn.Parameter(torch.randn(30, 20) * 0.02)
    r = head.detach().norm()
    opt = AdamH([head], lr=0.01)
    for _ in range(10):
        head.grad = torch.randn(30, 20)
        opt.step()
    torch.testing.assert_close(head.detach().norm(), r, rtol=1e-5, atol=0)


def test_radius_survives_bf16_params_roundtrip():
    p = nn.Parameter(torch.randn(16, 16).bfloat16())
    opt = MuonH([p])
    state = opt.state_dict()
    opt2 = MuonH([p])
    opt2.load_state_dict(state)
    assert opt2.radius(p).dtype == torch.float32


def test_bad_options_are_clear():
    with pytest.raises(ValueError, match="sphere"):
        MuonH([nn.Parameter(torch.randn(3, 3))], sphere="ball")
    with pytest.raises(ValueError, match="1-D"):
        MuonH([nn.Parameter(torch.randn(3))])
    with pytest.raises(TypeError, match="unknown optimizer options"):
        MuonH([nn.Parameter(torch.randn(3, 3))], bogus=1)


def test_cpu_newton_schulz_precision_is_the_faster_one():
    from hyperp.optim.precision import choose_cpu_ns_dtype

    def timer(times):
        return lambda dtype, budget: times[dtype]

    # A CPU with native bf16 (AVX512-BF16, AMX) runs it faster: bf16 is chosen.
    dtype, why = choose_cpu_ns_dtype(timer({torch.float32: 0.66, torch.bfloat16: 0.26}))
    assert dtype == torch.bfloat16 and "2.54x" in why
    # An emulated bf16 is tens of times slower: fp32 is chosen.
    dtype, why = choose_cpu_ns_dtype(timer({torch.float32: 0.013, torch.bfloat16: 0.9}))
    assert dtype == torch.float32 and "fp32" in why
    # A bf16 that is barely faster does not win: it also costs precision.
    dtype, _ = choose_cpu_ns_dtype(timer({torch.float32: 0.11, torch.bfloat16: 0.1}))
    assert dtype == torch.float32


def test_cpu_precision_is_cached_per_machine(tmp_path, monkeypatch):
    from hyperp.optim import precision

    monkeypatch.delenv("HYPERP_CPU_NS_DTYPE", raising=False)
    monkeypatch.setenv("HYPERP_CACHE", str(tmp_path))
    calls = []
    monkeypatch.setattr(
        precision, "choose_cpu_ns_dtype", lambda: calls.append(1) or (torch.float32, "measured")
    )
    precision.cpu_ns_choice.cache_clear()
    try:
        assert precision.cpu_ns_dtype() == torch.float32
        precision.cpu_ns_choice.cache_clear()  # a new process reads the cache
        dtype, why = precision.cpu_ns_choice()
        assert dtype == torch.float32 and "cached in" in why and len(calls) == 1
        monkeypatch.setenv("HYPERP_CPU_NS_DTYPE", "bf16")
        precision.cpu_ns_choice.cache_clear()
        assert precision.cpu_ns_dtype() == torch.bfloat16
    finally:
        precision.cpu_ns_choice.cache_clear()


@pytest.mark.parametrize("method", ["hyperp", "muon", "adamw"])
def test_dcp_state_dict_round_trip_into_a_fresh_optimizer(method, tmp_path):
    # torch.distributed.checkpoint's get/set_state_dict: keys are parameter names, and the
    # loading optimizer is fresh (its state must already be complete for DCP to fill it).
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    data = batches(12, seed=4)
    model, opt, _ = fresh(method)
    straight_model, straight_opt, _ = fresh(method)
    train(model, opt, data[:5])
    straight = train(straight_model, straight_opt, data)
    model_state, optim_state = get_state_dict(model, opt)
    assert any(
        key.startswith("up.weight") or "up.weight" in str(key) for key in optim_state["state"]
    )
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=tmp_path, no_dist=True)

    torch.manual_seed(999)
    model2 = TinyLM()
    opt2 = build_optimizer(model2, method, lr=0.03, weight_decay=0.05)
    model_state2, optim_state2 = get_state_dict(model2, opt2)
    state = {"model": model_state2, "optim": optim_state2}
    dcp.load(state, checkpoint_id=tmp_path, no_dist=True)
    set_state_dict(model2, opt2, model_state_dict=state["model"], optim_state_dict=state["optim"])
    assert train(model2, opt2, data[5:]) == straight[5:]
    for (name, a), b in zip(straight_model.named_parameters(), model2.parameters()):
        assert torch.equal(a, b), name
    if method == "hyperp":
        assert opt2.radius(model2.bank.weight).dtype == torch.float32
        assert torch.equal(opt2.radius(model2.bank.weight), opt.radius(model.bank.weight))


def test_coupled_decay_is_named_decoupled_and_old_state_still_loads():
    # lr x wd is AdamW's decoupled form: the former name is refused with the fix, while a state
    # dict saved under it loads as the same rule.
    weight = nn.Parameter(torch.randn(8, 4))
    with pytest.raises(ValueError, match="decay='decoupled'"):
        Muon([weight], decay="coupled")
    saved = Muon.like_torch([weight]).state_dict()
    assert saved["param_groups"][0]["decay"] == "decoupled"
    saved["param_groups"][0]["decay"] = "coupled"
    optimizer = Muon([weight])
    optimizer.load_state_dict(saved)
    assert optimizer.param_groups[0]["decay"] == "decoupled"
