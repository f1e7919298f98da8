"""Forward+backward throughput of ``hyperp.model.Transformer`` against a plain reference.

The reference is a minimal transformer written out directly (same shapes, same primitives:
``F.rms_norm``, ``F.scaled_dot_product_attention``, QK-norm, gates, RoPE, SwiGLU), loaded with
our model's weights so both compute the same function (checked before timing). All variants are
timed in the same process, interleaved round by round, and reported as ratios:

- overhead of our model with monitoring off (target: at most 5%),
- cost of a monitoring step (``hyperp.monitor.collect``) relative to a normal step,
- MoE tokens/s relative to the dense model of equal active compute (k experts of hidden 4n/k).

    PYTHONPATH=src python benchmarks/model_throughput.py                 # tiny, CPU
    PYTHONPATH=src python benchmarks/model_throughput.py --device cuda --depth 8 --width 1024 \\
        --head-dim 128 --vocab 32000 --context 1024 --batch 8
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

import hyperp.monitor
from hyperp.model import ModelConfig, Transformer
from hyperp.model.transformer import apply_rope


class ReferenceBlock(nn.Module):
    def __init__(self, c: ModelConfig) -> None:
        super().__init__()
        self.c = c
        n = c.width
        self.norm1 = nn.Parameter(torch.ones(n))
        self.norm2 = nn.Parameter(torch.ones(n))
        self.q_gain = nn.Parameter(torch.ones(c.head_dim))
        self.k_gain = nn.Parameter(torch.ones(c.head_dim))
        self.wq = nn.Linear(n, c.n_heads * c.head_dim, bias=False)
        self.wk = nn.Linear(n, c.n_kv_heads * c.head_dim, bias=False)
        self.wv = nn.Linear(n, c.n_kv_heads * c.head_dim, bias=False)
        self.wo = nn.Linear(c.n_heads * c.head_dim, n, bias=False)
        self.wg = nn.Linear(n, c.n_heads, bias=False)
        self.w1 = nn.Linear(n, c.mlp_hidden, bias=False)
        self.w3 = nn.Linear(n, c.mlp_hidden, bias=False)
        self.w2 = nn.Linear(c.mlp_hidden, n, bias=False)

    def forward(self, x, cos, sin):
        c, (b, t, n) = self.c, x.shape
        m = 1.0 / math.sqrt(2 * c.depth)
        h = F.rms_norm(x, (n,), self.norm1, c.norm_eps)
        q = F.rms_norm(
            self.wq(h).view(b, t, -1, c.head_dim), (c.head_dim,), self.q_gain, c.norm_eps
        )
        k = F.rms_norm(
            self.wk(h).view(b, t, -1, c.head_dim), (c.head_dim,), self.k_gain, c.norm_eps
        )
        v = self.wv(h).view(b, t, -1, c.head_dim).transpose(1, 2)
        q = apply_rope(q.transpose(1, 2), cos, sin)
        k = apply_rope(k.transpose(1, 2), cos, sin)
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, scale=c.softmax_scale, enable_gqa=True
        )
        y = y.transpose(1, 2) * torch.sigmoid(self.wg(h)).unsqueeze(-1)
        x = x + m * self.wo(y.reshape(b, t, -1))
        h = F.rms_norm(x, (n,), self.norm2, c.norm_eps)
        return x + m * self.w2(F.silu(self.w1(h)) * self.w3(h))


class ReferenceTransformer(nn.Module):
    def __init__(self, c: ModelConfig) -> None:
        super().__init__()
        self.c = c
        self.emb = nn.Embedding(c.vocab_size, c.width)
        self.layers = nn.ModuleList(ReferenceBlock(c) for _ in range(c.depth))
        self.norm = nn.Parameter(torch.ones(c.width))
        self.out = nn.Linear(c.width, c.vocab_size, bias=False)

    def forward(self, tokens, cos, sin):
        x = self.emb(tokens)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.out(F.rms_norm(x, (x.shape[-1],), self.norm, self.c.norm_eps))

    @torch.no_grad()
    def copy_from(self, model: Transformer) -> None:
        self.emb.weight.copy_(model.embedding.weight)
        self.out.weight.copy_(model.head.weight)
        self.norm.copy_(model.final_norm.weight)
        for ref, block in zip(self.layers, model.blocks):
            pairs = [
                (ref.norm1, block.attn_norm.weight),
                (ref.norm2, block.mlp_norm.weight),
                (ref.q_gain, block.attn.q_norm.weight),
                (ref.k_gain, block.attn.k_norm.weight),
                (ref.wq.weight, block.attn.q.weight),
                (ref.wk.weight, block.attn.k.weight),
                (ref.wv.weight, block.attn.v.weight),
                (ref.wo.weight, block.attn.o.weight),
                (ref.wg.weight, block.attn.gate.weight),
                (ref.w1.weight, block.mlp.gate.weight),
                (ref.w3.weight, block.mlp.up.weight),
                (ref.w2.weight, block.mlp.down.weight),
            ]
            for target, source in pairs:
                target.copy_(source)


def timed_step(step, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=1024)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--moe", default="4,4", help="sparsity,granularity of the MoE variant")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--bf16", action="store_true", help="autocast to bf16 (default on cuda)")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    parser.add_argument("--threads", type=int, help="CPU threads (1 is steadier on a busy machine)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    autocast = args.bf16 or device.type == "cuda"
    shape = dict(
        depth=args.depth,
        width=args.width,
        head_dim=args.head_dim,
        n_kv_heads=args.kv_heads,
        vocab_size=args.vocab,
        context=args.context,
    )
    sparsity, granularity = (int(v) for v in args.moe.split(","))
    dense_config = ModelConfig(**shape)
    moe_config = ModelConfig(**shape, moe_sparsity=sparsity, moe_granularity=granularity)
    torch.manual_seed(0)
    ours = Transformer(dense_config).to(device)
    reference = ReferenceTransformer(dense_config).to(device)
    reference.copy_from(ours)
    moe = Transformer(moe_config).to(device)
    tokens = torch.randint(0, args.vocab, (args.batch, args.context), device=device)
    cos, sin = ours.rope_cos, ours.rope_sin

    with torch.no_grad():
        difference = (ours(tokens).logits - reference(tokens, cos, sin)).abs().max().item()
    if difference > 1e-3:
        raise SystemExit(f"reference and model disagree (max |diff| {difference:.2e}); fix first")

    run_ours = torch.compile(ours) if args.compile else ours
    run_reference = torch.compile(reference) if args.compile else reference
    run_moe = torch.compile(moe) if args.compile else moe

    def ctx():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast)

    def step_ours():
        with ctx():
            run_ours(tokens, tokens).loss.backward()

    def step_reference():
        with ctx():
            logits = run_reference(tokens, cos, sin)
            F.cross_entropy(logits.float().flatten(0, 1), tokens.flatten()).backward()

    def step_monitored():
        with ctx(), hyperp.monitor.collect(ours) as stats:
            ours(tokens, tokens).loss.backward()
        stats.summary()  # includes the host sync of reading the values

    def step_moe():
        with ctx():
            run_moe(tokens, tokens).loss.backward()

    variants = {
        "reference": step_reference,
        "ours": step_ours,
        "ours+monitor": step_monitored,
        "moe": step_moe,
    }
    for step in variants.values():  # warm-up (and compilation)
        for _ in range(2):
            step()
    times: dict[str, list[float]] = {name: [] for name in variants}
    order = list(variants)
    shuffle = random.Random(0)
    for _ in range(args.rounds):
        shuffle.shuffle(order)  # no variant always runs first (caches, clock ramps)
        for name in order:
            times[name].append(timed_step(variants[name], device))
    tokens_per_step = args.batch * args.context
    # Median and minimum over rounds; on a shared CPU the minimum is the steadier estimate of
    # the intrinsic cost (contention only ever adds time).
    median = {name: statistics.median(values) for name, values in times.items()}
    fastest = {name: min(values) for name, values in times.items()}
    rate = {name: tokens_per_step / seconds for name, seconds in median.items()}

    print(
        f"device {device}, bf16 autocast {autocast}, compile {args.compile}, "
        f"threads {torch.get_num_threads()}, {args.rounds} rounds"
    )
    print(f"dense {shape}; moe s{sparsity}k{granularity}; batch {args.batch} x {args.context}")
    print(f"{'variant':<14} {'tokens/s':>12} {'ms/step med':>12} {'ms/step min':>12}")
    for name in variants:
        print(
            f"{name:<14} {rate[name]:>12.0f} {1000 * median[name]:>12.2f} "
            f"{1000 * fastest[name]:>12.2f}"
        )
    for label, stat in (("median", median), ("min", fastest)):
        overhead = stat["ours"] / stat["reference"] - 1
        monitor_cost = stat["ours+monitor"] / stat["ours"] - 1
        moe_ratio = stat["ours"] / stat["moe"]
        print(
            f"[{label}] overhead vs reference (monitoring off) {100 * overhead:+.1f}%; "
            f"monitoring step {100 * monitor_cost:+.1f}%; "
            f"MoE s{sparsity}k{granularity} tokens/s / dense {moe_ratio:.3f}"
        )


if __name__ == "__main__":
    main()
