"""``hyperp prepare``: tokenize text into packed token shards (see hyperp.data.prepare)."""

from __future__ import annotations

import shlex
import sys

from hyperp.cli import UserError, add_verb


def register(sub) -> None:
    parser = add_verb(
        sub,
        "prepare",
        help="tokenize text files, JSONL, Parquet or a HF dataset into token shards",
        example="hyperp prepare corpus/ extra.jsonl --out data/mycorpus --vocab-size 8192",
    )
    parser.add_argument(
        "inputs",
        nargs="*",
        metavar="INPUT",
        help="text/.jsonl/.parquet files, directories (walked recursively) or quoted globs",
    )
    parser.add_argument("--out", required=True, help="output directory for the shards")
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
        default=0.005,
        help="fraction of documents held out for validation (default 0.005)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/val split")
    parser.add_argument(
        "--shard-tokens",
        type=int,
        default=None,
        help="tokens per shard file (default 100M)",
    )
    parser.add_argument("--quiet", action="store_true", help="print only the final summary")
    parser.set_defaults(func=run)


def run(args) -> int:
    from hyperp.data.preparation import DEFAULT_SHARD_TOKENS, prepare

    if not args.inputs and args.hf_dataset is None:
        raise UserError("give at least one INPUT or --hf-dataset")

    def log(message: str) -> None:
        if not args.quiet:
            print(f"prepare: {message}", file=sys.stderr, flush=True)

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
        shard_tokens=args.shard_tokens or DEFAULT_SHARD_TOKENS,
        command=shlex.join(["hyperp", *sys.argv[1:]]),
        log=log,
    )
    import json

    meta = json.loads((out / "meta.json").read_text())
    train, val = meta["splits"]["train"], meta["splits"]["val"]
    print(
        f"prepared {out}: train {train['tokens']:,} tokens / {train['documents']:,} docs, "
        f"val {val['tokens']:,} tokens / {val['documents']:,} docs, vocab {meta['vocab_size']}, "
        f"{meta['replaced_bytes']} bytes replaced, {meta['prepare_seconds']:.1f}s"
    )
    return 0
