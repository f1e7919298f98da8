"""Decoding speed: KV-cached ``Transformer.generate`` against re-running the whole prefix for
every new token, and against ``transformers`` running the same model loaded from our export.

All three are timed in the same process, interleaved round by round, with greedy decoding
(so every variant produces the same tokens, which is checked), and reported as ratios of the
median time per new token:

- cached / full recompute (the issue asks for at least 3x on the tiny preset, 256 new tokens),
- our cached decode tokens/s / transformers' (goal: at least 0.9x).

The model is the tiny preset (``configs/tiny.toml``) trained for one step (speed does not
depend on the weights); its context is raised to prompt + new tokens so that no variant has to
slide a window. The transformers model is loaded from ``hyperp export`` of that run: by default
the preset as it is (gated attention: remote code), with ``--stock`` the Qwen3 variant.

    PYTHONPATH=src python benchmarks/generate.py                  # needs pip install '.[hf]'
    PYTHONPATH=src python benchmarks/generate.py --stock --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from hyperp.train import load_config


def train_run(directory: Path, overrides: dict) -> None:
    """A run directory of the tiny preset's shape, trained for one step on the built-in corpus
    (prepared into the cache on first use), as ``hyperp train`` leaves it."""
    from hyperp.train.trainer import train

    values = {"train.steps": 1, "train.progress": False, "train.eval_every": 0, **overrides}
    train(load_config("tiny", values), directory)


def _timed(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--prompt", type=int, default=16, help="prompt length in tokens")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--stock", action="store_true", help="no gated attention: Qwen3 export")
    parser.add_argument("--threads", type=int, help="CPU threads (1 is steadier on a busy machine)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    from transformers import AutoModelForCausalLM

    from hyperp.serve.export import export_run
    from hyperp.serve.run import load_run

    overrides = {"model.context": args.prompt + args.new_tokens}
    if args.stock:
        overrides["model.gated_attention"] = False
    with tempfile.TemporaryDirectory() as workdir:
        train_run(Path(workdir) / "run", overrides)
        model = load_run(Path(workdir) / "run", device="cpu").model
        exported = export_run(Path(workdir) / "run", Path(workdir) / "hf")
        hf = AutoModelForCausalLM.from_pretrained(
            exported.directory, trust_remote_code=exported.remote_code, dtype=torch.float32
        ).eval()

    prompt = torch.randint(0, model.config.vocab_size - 1, (1, args.prompt))
    n = args.new_tokens

    def cached():
        return model.generate(prompt, n, temperature=0)

    @torch.no_grad()
    def recompute():
        tokens = prompt
        for _ in range(n):
            next_token = model(tokens).logits[:, -1].argmax(-1, keepdim=True)
            tokens = torch.cat([tokens, next_token], dim=1)
        return tokens

    @torch.no_grad()
    def transformers_generate():
        return hf.generate(
            prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=None
        )

    reference = cached()
    assert torch.equal(recompute(), reference), "full recompute decoded other tokens"
    assert torch.equal(transformers_generate(), reference), "transformers decoded other tokens"

    times = {"cached": [], "recompute": [], "transformers": []}
    for _ in range(args.rounds):  # interleaved, so a busy machine slows all alike
        times["cached"].append(_timed(cached))
        times["recompute"].append(_timed(recompute))
        times["transformers"].append(_timed(transformers_generate))
    per_token = {name: statistics.median(values) / n for name, values in times.items()}

    config = model.config
    print(
        f"tiny preset shape: depth {config.depth}, width {config.width}, heads "
        f"{config.n_heads}/{config.n_kv_heads} kv, vocab {config.vocab_size}, "
        f"gated attention {config.gated_attention}; prompt {args.prompt}, {n} new tokens, "
        f"{torch.get_num_threads()} threads, median of {args.rounds} interleaved rounds"
    )
    print(f"transformers model: {exported.architecture} (remote code: {exported.remote_code})")
    for name, seconds in per_token.items():
        print(f"  {name:<13} {seconds * 1e3:8.3f} ms/token  {1 / seconds:9.1f} tokens/s")
    print(f"KV cache vs full recompute: {per_token['recompute'] / per_token['cached']:.2f}x faster")
    print(
        "cached decode tokens/s, ours / transformers: "
        f"{per_token['transformers'] / per_token['cached']:.2f}x"
    )


if __name__ == "__main__":
    main()
