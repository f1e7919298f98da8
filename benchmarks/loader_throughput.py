"""Is data loading ever the bottleneck? TrainLoader tokens/s against a training step's tokens/s.

Measures, in one process:

1. the loader alone: ``next(TrainLoader)`` on memory-mapped shards (synthetic llm.c shards
   written to a temporary directory, or ``--data``), in tokens per second;
2. the baseline: forward + backward + optimizer step of a small plain PyTorch transformer
   (``--width`` 128, ``--depth`` 4 by default) on batches of the same shape, in tokens per second;
   or a given figure with ``--trainer-tokens-per-s``.

and prints the ratio. The target is a ratio of at least 20: the loader must be at most 5% of a
training step's time.

    PYTHONPATH=src python benchmarks/loader_throughput.py
    PYTHONPATH=src python benchmarks/loader_throughput.py --data ~/.cache/hyperp/stdlib-...
    PYTHONPATH=src python benchmarks/loader_throughput.py --trainer-tokens-per-s 10000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hyperp.data import TrainLoader, open_corpus, write_llmc_shard

TARGET_RATIO = 20.0


class TinyTransformer(nn.Module):
    """Embedding, pre-norm causal encoder blocks, untied head: a stand-in for a small LM."""

    def __init__(self, vocab_size: int, width: int, depth: int, context: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, width)
        layer = nn.TransformerEncoderLayer(
            width,
            nhead=max(1, width // 32),
            dim_feedforward=4 * width,
            dropout=0.0,
            batch_first=True,
            norm_first=True,
        )
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab_size, bias=False)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(context))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        hidden = self.blocks(self.embedding(inputs), mask=self.mask, is_causal=True)
        return self.head(self.norm(hidden))


def loader_tokens_per_second(loader: TrainLoader, seconds: float) -> float:
    for _ in range(5):
        next(loader)
    steps, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        next(loader)
        steps += 1
    return steps * loader.local_batch_size * loader.context / elapsed


def trainer_tokens_per_second(
    vocab_size: int, width: int, depth: int, batch_size: int, context: int, seconds: float
) -> float:
    torch.manual_seed(0)
    model = TinyTransformer(vocab_size, width, depth, context)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    inputs = torch.randint(0, vocab_size, (batch_size, context))
    targets = torch.randint(0, vocab_size, (batch_size, context))

    def step() -> None:
        logits = model(inputs)
        loss = nn.functional.cross_entropy(logits.reshape(-1, vocab_size), targets.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(2):
        step()
    steps, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds or steps < 3:
        step()
        steps += 1
    return steps * batch_size * context / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", default=None, help="prepared dir or llm.c shards (default: synthetic)"
    )
    parser.add_argument("--synthetic-tokens", type=int, default=20_000_000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5.0, help="time per measurement")
    parser.add_argument(
        "--trainer-tokens-per-s",
        type=float,
        default=None,
        help="compare with this figure instead of timing the model",
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        if args.data is None:
            rng = np.random.default_rng(0)
            half = args.synthetic_tokens // 2
            for index in range(2):
                tokens = rng.integers(0, args.vocab_size, size=half, dtype=np.uint16)
                write_llmc_shard(Path(scratch) / f"bench_train_{index:06d}.bin", tokens)
            data = scratch
        else:
            data = args.data
        corpus = open_corpus(data)
        # The model's vocabulary follows the data, so the head costs what it would in training.
        model_vocab = corpus.vocab_size if args.data else args.vocab_size
        loader = TrainLoader(corpus, batch_size=args.batch_size, context=args.context, seed=0)
        loader_rate = loader_tokens_per_second(loader, args.seconds)
        print(
            f"data: {data if args.data else f'synthetic, {args.synthetic_tokens:,} tokens'} "
            f"({len(corpus.train):,} train tokens, {len(corpus.train.shards)} shards)"
        )
        print(
            f"batch {args.batch_size} x context {args.context}, torch threads {torch.get_num_threads()}"
        )
        print(f"loader alone:           {loader_rate:14,.0f} tokens/s")

    if args.trainer_tokens_per_s is not None:
        baseline, label = args.trainer_tokens_per_s, "given trainer figure"
    else:
        baseline = trainer_tokens_per_second(
            model_vocab,
            args.width,
            args.depth,
            args.batch_size,
            args.context,
            args.seconds,
        )
        label = f"fwd+bwd+step width {args.width} depth {args.depth}"
    print(f"baseline ({label}): {baseline:14,.0f} tokens/s")
    ratio = loader_rate / baseline
    verdict = "ok" if ratio >= TARGET_RATIO else "TOO SLOW"
    print(f"ratio loader / baseline: {ratio:,.1f}x (target >= {TARGET_RATIO:.0f}x): {verdict}")


if __name__ == "__main__":
    main()
