"""`hyperp train` on a Hugging Face Llama against the same model in a plain PyTorch loop.

Both sides train the same ``LlamaForCausalLM`` (built from the same config and seed) on the
same batches with the same optimizer (``build_optimizer`` with the roles of ``role_map``, HyperP,
Newton-Schulz in fp32), the same loss (cross-entropy of every position against the next token),
clipping and LR schedule, in fp32. The plain loop is what a user would write around the model;
the trainer adds its adapter (:class:`hyperp.hf.CausalLM`), the loss all-reduce, non-finite
checks, logging and the final checkpoint. Each side's rate is the median over 5-step intervals
after the warm-up steps (the trainer's logged ``tokens_per_s``; the same intervals timed in the
plain loop). Rounds alternate the two in this process, and which goes first; each round's ratio
(trainer / plain) is printed, then their median and range (goal: median >= 0.95).

    python benchmarks/hf_train.py                      # 7 rounds, a small Llama, CPU
    python benchmarks/hf_train.py --rounds 9 --hidden 256 --layers 4
"""

from __future__ import annotations

import argparse
import statistics
import sysconfig
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from hyperp.data import TrainLoader, open_corpus, prepare
from hyperp.hf import build_hf_model
from hyperp.optim import build_optimizer, role_map
from hyperp.rules import lr_schedule
from hyperp.train import load_config
from trainer_throughput import timed_run_overrides, trainer_run


def plain_loop(config, corpus, steps: int, warmup: int, log_every: int) -> float:
    """Tokens/s of a hand-written loop: the median over ``log_every``-step intervals after
    ``warmup``, measured as the trainer's logged rates are."""
    torch.manual_seed(config.train.seed)
    model = build_hf_model(config.model.hf_config)
    plan = config.plan()
    optimizer = build_optimizer(
        model, "hyperp", plan.lr, roles=role_map(model), ns_dtype=config.optim.ns_dtype
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_schedule(s, steps))
    loader = TrainLoader(
        corpus.train,
        batch_size=config.train.batch_size,
        context=config.train.seq_len,
        seed=config.train.seed,
    )
    rates, start = [], time.perf_counter()
    for step in range(1, steps + 1):
        inputs, targets = next(loader)
        logits = model(input_ids=inputs, use_cache=False).logits
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        if step % log_every == 0:
            loss.item()  # wait for the device (a no-op on a CPU)
            now = time.perf_counter()
            if step > warmup + log_every - 1:
                rates.append(log_every * plan.batch_tokens / (now - start))
            start = now
    return statistics.median(rates)


def small_corpus(directory: Path) -> Path:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = [stdlib / name for name in ("argparse.py", "textwrap.py", "difflib.py", "shlex.py")]
    return prepare(files, directory, vocab_size=512, val_fraction=0.1)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", help="a prepared corpus (default: a small one, made here)")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of both sides")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    log_every = 5
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(args.data) if args.data else small_corpus(Path(scratch) / "corpus")
        corpus = open_corpus(path)
        llama = {
            "model_type": "llama",
            "vocab_size": max(512, corpus.vocab_size),
            "hidden_size": args.hidden,
            "num_hidden_layers": args.layers,
            "num_attention_heads": args.hidden // 32,
            "num_key_value_heads": max(1, args.hidden // 64),
            "intermediate_size": 4 * args.hidden,
            "max_position_embeddings": args.seq_len,
        }
        overrides = {
            **timed_run_overrides(args.steps, log_every),
            "model.hf_config": llama,
            "data.path": str(path),
            "train.batch_size": args.batch_size,
            "train.seq_len": args.seq_len,
            "train.precision": "fp32",
            "optim.ns_dtype": "fp32",
            "train.threads": args.threads,
        }
        config = load_config(None, overrides).resolve(corpus.vocab_size)
        print(
            f"LlamaForCausalLM hidden {args.hidden}, {args.layers} layers, "
            f"{config.plan().params / 1e6:.2f}M parameters; batch {config.train.batch_tokens} "
            f"tokens, {args.steps} steps ({args.warmup} warm-up), threads "
            f"{torch.get_num_threads()}, {args.rounds} interleaved rounds"
        )
        plain, trainer = [], []
        for index in range(args.rounds):
            first_plain = index % 2 == 0  # alternate which side goes first
            for side in ("plain", "trainer") if first_plain else ("trainer", "plain"):
                if side == "plain":
                    plain.append(plain_loop(config, corpus, args.steps, args.warmup, log_every))
                else:
                    trainer.append(
                        trainer_run(load_config(None, overrides), args.warmup, log_every)
                    )
            print(
                f"round {index + 1}: plain {plain[-1]:8.0f} tokens/s, trainer {trainer[-1]:8.0f} "
                f"tokens/s, ratio {trainer[-1] / plain[-1]:.3f}"
            )
    ratios = [t / p for t, p in zip(trainer, plain)]
    print(f"plain loop   : median {statistics.median(plain):8.0f} tokens/s")
    print(f"hyperp train : median {statistics.median(trainer):8.0f} tokens/s")
    print(
        f"trainer / plain: median {statistics.median(ratios):.3f}x, range "
        f"{min(ratios):.3f}-{max(ratios):.3f} over {len(ratios)} rounds (goal >= 0.95)"
    )


if __name__ == "__main__":
    main()
