"""``hyperp transfer``: the LR, token budget, batch and compute a target model gets (docs/method.md §4)."""

from __future__ import annotations

import argparse
import json

from hyperp.cli import UserError, add_verb


def _number(text: str) -> float:
    from hyperp.rules import parse_number

    try:
        return parse_number(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def register(sub) -> None:
    parser = add_verb(
        sub,
        "transfer",
        help="LR, tokens, batch and FLOPs for target models from a tuned base (HyperP rules)",
        example="hyperp transfer --base-lr 0.016 --depth 12 16 20 24",
        description=(
            "Apply the HyperP transfer rule (docs/method.md §4):\n"
            "  lr = base_lr * (B/B0)^0.5 * (d0/d)^0.5 * (T/T0)^-0.32\n"
            "Defaults are the paper's base: d0=8, aspect ratio 128, head dim 128, 4 KV heads,\n"
            "vocab 32000, context 4096, T0=10.4e9 tokens, B0=2^21 tokens. The token budget T\n"
            "defaults to Chinchilla-style T0*N(d)/N(d0)."
        ),
    )
    base = parser.add_argument_group("base model (where the LR was tuned)")
    base.add_argument("--base-lr", type=float, default=0.016, help="tuned base LR (default 0.016)")
    base.add_argument("--base-depth", type=int, default=8, help="d0 (default 8)")
    base.add_argument("--base-width", type=int, help="base width (default aspect ratio * depth)")
    base.add_argument("--base-tokens", type=_number, default=10.4e9, help="T0 (default 10.4e9)")
    base.add_argument(
        "--base-batch", type=_number, default=2.0**21, help="B0 in tokens (default 2**21)"
    )
    target = parser.add_argument_group("targets")
    target.add_argument("--depth", type=int, nargs="+", required=True, help="target depths")
    target.add_argument(
        "--width",
        type=int,
        nargs="+",
        help="target widths, one per depth (default aspect ratio * depth)",
    )
    target.add_argument(
        "--tokens",
        type=_number,
        nargs="+",
        help="token budgets, one per depth or one for all (default Chinchilla-style)",
    )
    target.add_argument(
        "--batch",
        type=_number,
        nargs="+",
        help="global batch in tokens, one per depth or one for all (default B0)",
    )
    shape = parser.add_argument_group("model family (shared by base and targets)")
    shape.add_argument("--aspect-ratio", type=int, default=128)
    shape.add_argument("--head-dim", type=int, default=128)
    shape.add_argument("--kv-heads", type=int, default=4)
    shape.add_argument("--vocab-size", type=int, default=32000)
    shape.add_argument("--context", type=int, default=4096)
    rule = parser.add_argument_group("rule constants")
    rule.add_argument("--token-exponent", type=float, default=-0.32)
    rule.add_argument("--batch-exponent", type=float, default=0.5)
    rule.add_argument("--depth-exponent", type=float, default=0.5)
    rule.add_argument(
        "--method",
        choices=("hyperp", "muon", "adamw"),
        default="hyperp",
        help="muon and adamw transfer without the token factor (docs/method.md §2.5)",
    )
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    parser.set_defaults(func=run)


def _per_target(values, count: int, name: str) -> list:
    if values is None:
        return [None] * count
    if len(values) == 1:
        return values * count
    if len(values) != count:
        raise UserError(f"--{name} takes one value or one per --depth ({count}), got {len(values)}")
    return values


def run(args: argparse.Namespace) -> int:
    from hyperp.rules import ModelScale, TransferRule, transfer

    family = {
        "aspect_ratio": args.aspect_ratio,
        "head_dim": args.head_dim,
        "n_kv_heads": args.kv_heads,
        "vocab_size": args.vocab_size,
        "context": args.context,
    }
    base = ModelScale(depth=args.base_depth, width=args.base_width, **family)
    rule = TransferRule.for_method(
        args.method,
        base=base,
        base_lr=args.base_lr,
        base_tokens=args.base_tokens,
        base_batch=args.base_batch,
        batch_exponent=args.batch_exponent,
        depth_exponent=args.depth_exponent,
        **({"token_exponent": args.token_exponent} if args.method == "hyperp" else {}),
    )
    count = len(args.depth)
    widths = _per_target(args.width, count, "width")
    tokens = _per_target(args.tokens, count, "tokens")
    batches = _per_target(args.batch, count, "batch")
    results = [
        transfer(ModelScale(depth=d, width=w, **family), rule=rule, tokens=t, batch=b)
        for d, w, t, b in zip(args.depth, widths, tokens, batches)
    ]
    if args.json:
        print(
            json.dumps(
                {
                    "rule": results[0].to_dict()["rule"],
                    "targets": [
                        {k: v for k, v in r.to_dict().items() if k != "rule"} for r in results
                    ],
                },
                indent=2,
            )
        )
        return 0
    print(
        f"base: depth {base.depth}, width {base.width}, lr {rule.base_lr:g}, "
        f"tokens {rule.base_tokens:.3g}, batch {rule.base_batch:.3g} tokens ({args.method} rule)"
    )
    header = (
        "depth",
        "width",
        "params",
        "tokens",
        "tok/param",
        "batch",
        "steps",
        "lr x",
        "peak lr",
        "final lr",
        "FLOPs",
    )
    rows = [header] + [
        (
            str(r.scale.depth),
            str(r.scale.width),
            f"{r.params / 1e6:.1f}M",
            f"{r.tokens:.3g}",
            f"{r.tokens_per_param:.1f}",
            f"{r.batch:.3g}",
            str(r.steps),
            f"{r.lr_multiplier:.3f}",
            f"{r.lr:.4g}",
            f"{r.final_lr:.4g}",
            f"{r.flops:.4g}",
        )
        for r in results
    ]
    widths_ = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(cell.rjust(w) for cell, w in zip(row, widths_)))
    return 0
