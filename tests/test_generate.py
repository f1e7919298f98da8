"""KV-cached incremental decoding (dense, GQA, MoE), sampling, and ``hyperp generate``."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from hyperp.cli import main
from hyperp.model import KVCache, ModelConfig, Transformer
from hyperp.model.transformer import sample_next_token
from serve_support import trained_run
from support import subprocess_env


def model(**overrides) -> Transformer:
    values = dict(depth=2, width=32, head_dim=8, n_kv_heads=2, vocab_size=97, context=40)
    # Larger embeddings than the paper's 1e-4 so attention patterns are far from uniform.
    values.update(embedding_init_std=0.5, **overrides)
    return Transformer(ModelConfig(**values)).eval()


VARIANTS = {
    "dense_ga_gqa": {},  # 8 query heads on 2 KV heads
    "dense_mha_no_qk_norm": dict(n_kv_heads=8, qk_norm=False, gated_attention=False),
    "moe_sqrt_shared": dict(moe_sparsity=2, moe_granularity=4, moe_shared_expert=True),
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_cached_logits_equal_a_full_forward_at_every_position(variant):
    net = model(**VARIANTS[variant])
    tokens = torch.randint(0, 97, (3, 37))
    with torch.no_grad():
        full = net(tokens).logits
        cache = KVCache(net.config.depth, net.config.context)
        # A prefill, single tokens, and a chunk after a cached prefix (RoPE offsets and the
        # bottom-right causal mask), then single tokens to the end.
        pieces = [(0, 6), (6, 7), (7, 8), (8, 15), *((t, t + 1) for t in range(15, 37))]
        cached = torch.cat([net(tokens[:, a:b], cache=cache).logits for a, b in pieces], dim=1)
    assert cache.length == 37
    torch.testing.assert_close(cached, full, rtol=0, atol=2e-5)


def test_generate_greedy_equals_argmax_of_full_recompute():
    net = model(**VARIANTS["moe_sqrt_shared"])
    prompt = torch.randint(0, 97, (2, 5))
    out = net.generate(prompt, 20, temperature=0)
    assert out.shape == (2, 25) and torch.equal(out[:, :5], prompt)
    with torch.no_grad():
        for t in range(5, 25):
            assert torch.equal(net(out[:, :t]).logits[:, -1].argmax(-1), out[:, t])


def test_decoding_past_the_context_slides_the_cache():
    net = model()
    prompt = torch.randint(0, 97, (1, 30))
    out = net.generate(prompt, 30, temperature=0)  # 60 tokens > context 40
    assert out.shape == (1, 60)
    # After the cache fills, it is rebuilt from the last context // 2 tokens.
    with torch.no_grad():
        window = out[:, 40 - 20 : 40]
        assert int(net(window).logits[0, -1].argmax()) == int(out[0, 40])
    with pytest.raises(ValueError, match="shorten the prompt"):
        next(net.stream(torch.zeros(1, 41, dtype=torch.long), 1))


def test_sampling_is_seeded_and_filters_are_respected():
    net = model()
    prompt = torch.randint(0, 97, (2, 4))

    def sample(seed, **options):
        generator = torch.Generator().manual_seed(seed)
        return net.generate(prompt, 25, generator=generator, **options)

    assert torch.equal(sample(1), sample(1))
    assert not torch.equal(sample(1), sample(2))
    greedy = net.generate(prompt, 25, temperature=0)
    assert torch.equal(sample(3, top_k=1), greedy)
    assert torch.equal(sample(4, top_p=1e-6), greedy)
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    draws = {int(sample_next_token(logits, 1.0, top_k=2)) for _ in range(200)}
    assert draws == {2, 3}
    # probabilities 0.032, 0.087, 0.237, 0.644: the nucleus of 0.8 is {3, 2}
    draws = {int(sample_next_token(logits, 1.0, top_p=0.8)) for _ in range(200)}
    assert draws == {2, 3}
    with pytest.raises(ValueError, match="temperature"):
        sample_next_token(logits, -1.0)


def test_cli_generate_streams_the_same_text_for_the_same_seed(capsys):
    run = trained_run("dense_ga")
    capsys.readouterr()  # the training log, when this test trained the run
    args = ["generate", str(run), "--prompt", "def main(", "--max-new-tokens", "30"]
    assert main([*args, "--seed", "7"]) == 0
    first = capsys.readouterr().out
    assert main([*args, "--seed", "7"]) == 0
    assert capsys.readouterr().out == first
    assert main([*args, "--seed", "8"]) == 0
    assert capsys.readouterr().out != first
    assert first.startswith("def main(") and len(first) > len("def main(\n")


def test_cli_generate_output_arrives_while_decoding(tmp_path):
    """stdout is flushed piece by piece: the first text is readable before the process ends."""
    run = trained_run("dense_ga")
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("import os\n")
    command = [sys.executable, "-m", "hyperp", "generate", str(run), "--prompt-file"]
    process = subprocess.Popen(
        # Greedy, so the text (and that it does not end the document early) is fixed.
        [*command, str(prompt), "--max-new-tokens", "200", "--temperature", "0"],
        stdout=subprocess.PIPE,
        env=subprocess_env(),
    )
    try:
        first = process.stdout.read(len("import os\n") + 1)
        assert first.startswith(b"import os\n")
        assert process.poll() is None  # still decoding
        rest = process.stdout.read()
        assert len(rest) > 50 and process.wait() == 0
    finally:
        process.kill()
        process.wait()


def test_cli_generate_mistakes_are_one_line(capsys, tmp_path):
    run = trained_run("dense_ga")
    capsys.readouterr()
    assert main(["generate", str(run), "--top-p", "1.5"]) == 2
    assert "--top-p must be in (0, 1]" in capsys.readouterr().err
    assert main(["generate", str(run), "--prompt", "x" * 400]) == 2
    assert "shorten the prompt" in capsys.readouterr().err
    assert main(["generate", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
