"""``hyperp export``: write a Hugging Face model directory for a trained run."""

from __future__ import annotations

from hyperp.cli import add_verb


def register(sub) -> None:
    parser = add_verb(
        sub,
        "export",
        help="write a Hugging Face model directory (transformers, vLLM, lm-eval)",
        example="hyperp export runs/tiny-1a2b3c --out hf/tiny --dtype bf16",
        description=(
            "Write model.safetensors (sharded past 5 GB), config.json, generation_config.json,\n"
            "tokenizer.json, tokenizer_config.json and a README. A dense model without gated\n"
            "attention is exported as the stock Qwen3 (with QK-norm) or Llama (without)\n"
            "architecture, with hyperp's multipliers folded into the weights: no remote code.\n"
            "Gated attention and MoE models carry a modeling file; load them with\n"
            "trust_remote_code=True, and the command names the setting that ruled out a stock\n"
            "export (the presets use gated attention: train with --model.gated_attention false\n"
            "for a stock one). Needs pip install 'hyperp[hf]'."
        ),
    )
    parser.add_argument("run_dir", metavar="RUN", help="a run directory written by hyperp train")
    parser.add_argument("--out", required=True, metavar="DIR", help="the directory to write")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--step", type=int, help="checkpoint step (default: the newest)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace DIR if it exists and is not empty"
    )
    parser.set_defaults(func=run)


def run(args) -> int:
    from hyperp.serve.export import export_run

    result = export_run(
        args.run_dir, args.out, step=args.step, dtype=args.dtype, overwrite=args.overwrite
    )
    how = "trust_remote_code=True" if result.remote_code else "no remote code"
    print(f"wrote {result.directory} ({result.architecture}, step {result.step}, {how})")
    for setting in result.blocked_by:
        print(f"not a stock architecture because of {setting}")
    print(kept_message(result.step))
    return 0


def kept_message(step: int) -> str:
    from hyperp.train.checkpoint import KEEP

    return (
        f"the checkpoint of step {step} is kept from pruning (a {KEEP} file in its directory; "
        "delete it to let pruning remove the checkpoint)"
    )
