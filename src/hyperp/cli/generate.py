"""``hyperp generate``: sample text from a trained run, streamed as it is decoded."""

from __future__ import annotations

import sys
from pathlib import Path

from hyperp.cli import UserError, add_verb


def register(sub) -> None:
    parser = add_verb(
        sub,
        "generate",
        help="sample text from a trained run (KV-cached, streamed to stdout)",
        example='hyperp generate runs/tiny-1a2b3c --prompt "def main(" --max-new-tokens 200',
        description=(
            "Continue a prompt with the run's newest checkpoint (or --step N). The prompt starts\n"
            "a new document, as every training document did; sampling stops after\n"
            "--max-new-tokens or when the model ends the document. The prompt is printed, then\n"
            "the continuation as it is decoded. The same --seed gives the same text;\n"
            "--temperature 0 is greedy decoding."
        ),
    )
    parser.add_argument("run_dir", metavar="RUN", help="a run directory written by hyperp train")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--prompt", default="", help="the text to continue (default: empty)")
    source.add_argument("--prompt-file", metavar="FILE", help="read the prompt from this file")
    parser.add_argument("--max-new-tokens", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.8, help="0 is greedy (default 0.8)")
    parser.add_argument("--top-k", type=int, help="sample among the k most likely tokens only")
    parser.add_argument("--top-p", type=float, help="nucleus sampling: smallest set with mass p")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--step", type=int, help="checkpoint step (default: the newest)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    parser.set_defaults(func=run)


def run(args) -> int:
    if args.prompt_file is not None:
        path = Path(args.prompt_file)
        if not path.is_file():
            raise UserError(f"--prompt-file {path} does not exist")
        prompt = path.read_text(encoding="utf-8", errors="replace")
    else:
        prompt = args.prompt
    if args.top_k is not None and args.top_k < 1:
        raise UserError(f"--top-k must be at least 1, got {args.top_k}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise UserError(f"--top-p must be in (0, 1], got {args.top_p}")

    from hyperp.serve.generation import generate_text
    from hyperp.serve.run import load_run

    loaded = load_run(args.run_dir, step=args.step, device=args.device)
    out = sys.stdout
    out.write(prompt)
    out.flush()
    for piece in generate_text(
        loaded,
        prompt,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
    ):
        out.write(piece)
        out.flush()
    out.write("\n")
    out.flush()
    return 0
