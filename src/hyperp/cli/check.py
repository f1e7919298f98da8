"""``hyperp check``: coordinate check of the parameterization (activation RMS against width)."""

from __future__ import annotations

import json
import sys

from hyperp.cli import UserError, add_verb

_METHODS = ("hyperp", "muon", "adamw", "sp-adamw")


def register(sub) -> None:
    parser = add_verb(
        sub,
        "check",
        help="coordinate check: train a few steps at several widths, tabulate activation RMS",
        example="hyperp check --widths 64 128 256 --depths 2 4 --plot coord.png",
        description=(
            "Train a few steps on synthetic Markov-chain tokens at several widths (and depths) and\n"
            "report each layer's activation RMS (attention/MLP branch outputs after the Depth-muP\n"
            "multiplier, residual stream, logits) against width. Under HyperP the hidden curves\n"
            "are flat: |slope of log RMS vs log width| <= 0.2. Compare with --method sp-adamw\n"
            "(standard parameterization, AdamW), whose curves grow with width. The logits follow\n"
            "the head-init width rule (docs/method.md §3) and are shown but not part of the verdict.\n"
            "Any other model field is set as in hyperp train: --model.KEY VALUE, e.g.\n"
            "--model.head_init_rule inverse_width --model.qk_norm false.\n"
            "With --hf-config, the family is a Hugging Face causal LM built from a local\n"
            "config.json (width and depth replace hidden_size and num_hidden_layers; head size,\n"
            "query/key-value ratio and MLP ratio are kept) and every submodule's output RMS is\n"
            "recorded through forward hooks, grouped by kind (model.layers.*.mlp.down_proj).\n"
            "Exit status 0 when every hidden curve is flat, 1 otherwise."
        ),
    )
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--depths", type=int, nargs="+", default=[2])
    parser.add_argument("--method", choices=_METHODS, default="hyperp")
    parser.add_argument(
        "--lr", type=float, help="learning rate (default: 0.02 hyperp/muon, 0.01 adamw)"
    )
    parser.add_argument("--steps", type=int, default=10, help="training steps (default 10)")
    parser.add_argument("--batch", type=int, default=8, help="sequences per step (default 8)")
    parser.add_argument("--context", type=int, default=64, help="sequence length (default 64)")
    parser.add_argument("--vocab-size", type=int, default=256)
    parser.add_argument("--head-dim", type=int, default=16)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--hf-config",
        metavar="PATH",
        help="check a Hugging Face causal LM family: a config.json or a directory holding one",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--plot", metavar="PNG", help="write RMS-vs-width plots here")
    parser.add_argument("--json", action="store_true", help="print the full result as JSON")
    parser.set_defaults(func=run, accepts_overrides=True)


def _model_overrides(items: list[str]) -> dict:
    """``--model.KEY VALUE`` overrides through the trainer's one typed parser."""
    from hyperp.train.config import parse_overrides

    overrides = parse_overrides(items, sections=("model",)).get("model", {})
    reserved = {"depth", "width", "head_dim", "n_kv_heads", "vocab_size", "context"}
    for key in sorted(reserved & set(overrides)):
        option = {"depth": "depths", "width": "widths", "n_kv_heads": "kv-heads"}.get(key, key)
        raise UserError(f"--model.{key}: set it with the check's own --{option.replace('_', '-')}")
    return overrides


def _hf_check(args):
    from hyperp.coordinates import coord_check_module, hf_factory

    if args.overrides:
        raise UserError("--model.KEY options set the project's own model; edit the --hf-config")
    try:
        make = hf_factory(args.hf_config)
        return coord_check_module(
            make,
            args.widths,
            args.depths,
            method=args.method,
            lr=args.lr,
            steps=args.steps,
            vocab_size=make.config.vocab_size,
            batch=args.batch,
            context=args.context,
            seed=args.seed,
        )
    except ValueError as error:
        raise UserError(f"--hf-config {args.hf_config}: {error}") from None


def run(args) -> int:
    from hyperp.model.coord_check import coord_check

    if any(w < 1 for w in args.widths) or any(d < 1 for d in args.depths):
        raise UserError("widths and depths must be positive integers")
    if args.hf_config:
        result = _hf_check(args)
        return _report(args, result, result.not_flat(), "every module's output")
    result = coord_check(
        widths=args.widths,
        depths=args.depths,
        method=args.method,
        lr=args.lr,
        steps=args.steps,
        batch=args.batch,
        context=args.context,
        vocab_size=args.vocab_size,
        head_dim=args.head_dim,
        n_kv_heads=args.kv_heads,
        seed=args.seed,
        model_overrides=_model_overrides(args.overrides),
        device=args.device,
    )
    return _report(args, result, result.not_flat(include_logits=False), "every hidden activation")


def _report(args, result, not_flat: dict, what: str) -> int:
    if args.plot:
        result.plot(args.plot)
    if args.json:
        out = result.to_dict()
        out["flat"] = not not_flat
        json.dump(out, sys.stdout, indent=1)
        print()
    else:
        print(result.table())
        if not_flat:
            names = ", ".join(f"d{depth} {quantity}" for depth, quantity in not_flat)
            print(f"NOT FLAT: {names}")
        else:
            print(f"flat: {what} is width-independent within the tolerance")
        if args.plot:
            print(f"plot written to {args.plot}")
    return 1 if not_flat else 0
