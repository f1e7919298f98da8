"""The README's jobs on the built-in corpus: its first command (`hyperp train --config smoke`)
finishes and learns the token distribution; `hyperp train` (the tiny preset) learns context
(slow: about 5 minutes on 2 quiet cores, run with -m slow)."""

import json
import math
import subprocess
import sys

import pytest

from hyperp.data import default_corpus, open_corpus
from support import subprocess_env


def _train(out, *args: str) -> tuple[dict, str]:
    done = subprocess.run(
        [sys.executable, "-m", "hyperp", "train", "--out", str(out), *args],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((out / "summary.json").read_text()), done.stdout


def test_smoke_preset_finishes_and_learns_the_token_distribution(tmp_path):
    summary, stdout = _train(tmp_path / "smoke", "--config", "smoke")
    assert stdout.strip().splitlines()[-1].startswith("finished:")
    assert summary["steps"] == 60 and summary["method"] == "hyperp"
    # It starts near ln V (docs/method.md §3.2); a run that learns at all ends more than one nat
    # below it (measured: 7.09 against ln 8192 = 9.01).
    vocab = open_corpus(default_corpus()).vocab_size
    assert summary["val_loss"] < math.log(vocab) - 1.0, summary["val_loss"]


@pytest.mark.slow
def test_tiny_preset_learns_the_builtin_corpus(tmp_path):
    summary, _ = _train(tmp_path / "tiny", "--train.progress", "false")
    corpus = open_corpus(default_corpus())  # the cache the run prepared (or found)
    entropy = corpus.meta["unigram_entropy_nats"]
    # A unigram model cannot beat the entropy of the token distribution; a model that learns
    # context must. "Well below": by more than 1 nat (a factor e in perplexity).
    assert summary["val_loss"] < entropy - 1.0, (summary["val_loss"], entropy)
    assert summary["steps"] == 300 and summary["method"] == "hyperp"
