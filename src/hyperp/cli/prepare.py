"""``hyperp prepare``: tokenize text into packed token shards (see hyperp.data.prepare)."""

from __future__ import annotations

import json
import shlex
import signal
import sys
import threading
import warnings

from hyperp.cli import UserError, add_verb


def register(sub) -> None:
    parser = add_verb(
        sub,
        "prepare",
        help="tokenize text files, JSONL, Parquet or a HF dataset into token shards",
        example="hyperp prepare corpus/ extra.jsonl.gz --out data/mycorpus --vocab-size 8192",
    )
    parser.add_argument(
        "inputs",
        nargs="*",
        metavar="INPUT",
        help="text/.jsonl/.parquet files (text and JSONL may be .gz), directories (walked "
        "recursively) or quoted globs",
    )
    parser.add_argument(
        "--out",
        required=True,
        help="output directory; an earlier preparation there is replaced only on success",
    )
    parser.add_argument(
        "--vocab-size", type=int, default=8192, help="BPE vocabulary to train (default 8192)"
    )
    parser.add_argument(
        "--tokenizer", default=None, help="use this tokenizer.json instead of training one"
    )
    parser.add_argument("--jsonl-field", default="text", help="text field of JSONL records")
    parser.add_argument("--parquet-column", default="text", help="text column of Parquet files")
    parser.add_argument(
        "--hf-dataset", default=None, help="a Hugging Face dataset name or local (saved) copy"
    )
    parser.add_argument("--hf-split", default="train", help="split of --hf-dataset")
    parser.add_argument("--hf-field", default="text", help="text column of --hf-dataset")
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=None,
        help="share of the text held out for validation (default: automatic, 1%% of the text, "
        "at least ~0.5M and at most ~10M tokens, never above 10%%)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/val split")
    parser.add_argument(
        "--shard-tokens",
        type=int,
        default=None,
        help="tokens per shard file (default 100M)",
    )
    parser.add_argument(
        "--max-bytes",
        type=int,
        default=None,
        help="read inputs in order only until their text reaches this many bytes (a quick "
        "look at a large tree; default: everything)",
    )
    parser.add_argument(
        "--quiet", action="store_true", help="print only warnings, errors and the final summary"
    )
    parser.set_defaults(func=run)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"prepare: warning: {message}", file=sys.stderr, flush=True)


class _Terminated(KeyboardInterrupt):
    """SIGTERM (a job scheduler's stop): cleaned up like Ctrl-C, reported with status 143."""


def _terminated(signum, frame) -> None:
    raise _Terminated


def _on_sigterm(handler):
    """Install a SIGTERM handler where Python allows it (the main thread); return the old one."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, handler)


def run(args) -> int:
    from hyperp.data.preparation import DEFAULT_SHARD_TOKENS, prepare

    if not args.inputs and args.hf_dataset is None:
        raise UserError("give at least one INPUT or --hf-dataset")

    def log(message: str) -> None:
        if not args.quiet:
            print(f"prepare: {message}", file=sys.stderr, flush=True)

    progress = None if args.quiet else ("bar" if sys.stderr.isatty() else "lines")
    previous_handler = _on_sigterm(_terminated)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", UserWarning)
            warnings.showwarning = _show_warning
            out = prepare(
                args.inputs,
                args.out,
                tokenizer=args.tokenizer,
                vocab_size=args.vocab_size,
                val_fraction=args.val_fraction,
                seed=args.seed,
                jsonl_field=args.jsonl_field,
                parquet_column=args.parquet_column,
                hf_dataset=args.hf_dataset,
                hf_split=args.hf_split,
                hf_field=args.hf_field,
                shard_tokens=DEFAULT_SHARD_TOKENS
                if args.shard_tokens is None
                else args.shard_tokens,
                max_bytes=args.max_bytes,
                command=shlex.join(["hyperp", *sys.argv[1:]]),
                log=log,
                progress=progress,
            )
    except KeyboardInterrupt as stop:
        print(
            f"hyperp prepare: interrupted; {args.out} is unchanged (nothing was written)",
            file=sys.stderr,
        )
        return 143 if isinstance(stop, _Terminated) else 130
    finally:
        if previous_handler is not None:
            _on_sigterm(previous_handler)
    meta = json.loads((out / "meta.json").read_text())
    train, val = meta["splits"]["train"], meta["splits"]["val"]
    print(
        f"prepared {out}: train {train['tokens']:,} tokens / {train['documents']:,} docs, "
        f"val {val['tokens']:,} tokens / {val['documents']:,} docs, vocab {meta['vocab_size']}, "
        f"{meta['replaced_bytes']} bytes replaced, {meta['prepare_seconds']:.1f}s"
    )
    return 0
