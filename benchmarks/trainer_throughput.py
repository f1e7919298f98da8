"""Trainer tokens/s against a minimal hand-written loop: same model, data and optimizer.

The hand loop is what a user would write: draw a batch, forward, backward, clip, step. The
trainer adds the schedule bookkeeping, loss all-reduce, non-finite checks, logging, progress and
the final checkpoint. Both run in this process, alternating, and the ratio of their steady-state
token rates is printed (goal: at least 0.95). The loader alone is timed too (goal: at least 20x
the trainer's rate).

    python benchmarks/trainer_throughput.py                  # tiny preset shape, CPU
    python benchmarks/trainer_throughput.py --steps 60 --rounds 3 --config tiny
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from hyperp.data import TrainLoader, run_corpus
from hyperp.model import Transformer
from hyperp.optim import build_optimizer
from hyperp.rules import lr_schedule
from hyperp.train import load_config
from hyperp.train.trainer import train


def hand_loop(config, corpus, steps: int, warmup: int) -> float:
    """Tokens/s of the minimal loop over the steps after ``warmup``."""
    torch.manual_seed(config.train.seed)
    model = Transformer(config.model)
    plan = config.plan()
    optimizer = build_optimizer(model, config.optim.method, plan.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_schedule(s, steps))
    loader = TrainLoader(
        corpus.train,
        batch_size=config.train.batch_size,
        context=config.train.seq_len,
        seed=config.train.seed,
    )
    for step in range(steps):
        if step == warmup:
            start = time.perf_counter()
        inputs, targets = next(loader)
        loss = model(inputs, targets).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
    elapsed = time.perf_counter() - start
    return (steps - warmup) * plan.batch_tokens / elapsed


def trainer_run(config, warmup: int, log_every: int) -> float:
    """Tokens/s of hyperp's trainer over the logged intervals after ``warmup`` steps."""
    with tempfile.TemporaryDirectory() as directory:
        train(config, Path(directory) / "run", resume="never")
        records = [json.loads(line) for line in (Path(directory) / "run/metrics.jsonl").open()]
    rates = [
        r["tokens_per_s"]
        for r in records
        if r["step"] > warmup + log_every - 1 and r["step"] % log_every == 0 and "tokens_per_s" in r
    ]
    return statistics.median(rates)


def timed_run_overrides(steps: int, log_every: int) -> dict:
    """A trainer run that does only the steps: no evaluation, monitor, checkpoints or progress
    bar; tokens/s logged every ``log_every`` steps."""
    return {
        "train.steps": steps,
        "train.log_every": log_every,
        "train.eval_batches": 0,
        "train.monitor_every": 0,
        "train.checkpoint_every": 0,
        "train.progress": False,
    }


def loader_rate(config, corpus, batches: int = 2000) -> float:
    loader = TrainLoader(
        corpus.train, batch_size=config.train.batch_size, context=config.train.seq_len, seed=1
    )
    start = time.perf_counter()
    for _ in range(batches):
        next(loader)
    return batches * config.train.batch_tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    log_every = 10
    overrides = timed_run_overrides(args.steps, log_every)
    config = load_config(args.config, overrides)
    corpus = run_corpus(config, prepare=True)
    config = config.resolve(corpus.vocab_size)
    print(
        f"model depth {config.model.depth} width {config.model.width}, batch "
        f"{config.train.batch_tokens} tokens, {args.steps} steps, threads {torch.get_num_threads()}"
    )
    hand, trainer = [], []
    for _ in range(args.rounds):
        hand.append(hand_loop(config, corpus, args.steps, args.warmup))
        trainer.append(trainer_run(load_config(args.config, overrides), args.warmup, log_every))
    hand_rate, trainer_rate = statistics.median(hand), statistics.median(trainer)
    loader = loader_rate(config, corpus)
    print(f"hand-written loop : {hand_rate:10.0f} tokens/s  (rounds: {[round(h) for h in hand]})")
    print(
        f"hyperp trainer    : {trainer_rate:10.0f} tokens/s  (rounds: {[round(t) for t in trainer]})"
    )
    print(f"trainer / hand    : {trainer_rate / hand_rate:10.3f}x  (goal >= 0.95)")
    print(
        f"loader alone      : {loader:10.0f} tokens/s = {loader / trainer_rate:.0f}x the trainer (goal >= 20x)"
    )


if __name__ == "__main__":
    main()
