"""The README's main job: `hyperp train` (tiny preset, built-in corpus) learns the data."""

import json
import subprocess
import sys

from hyperp.data import default_corpus, open_corpus
from support import subprocess_env


def test_tiny_preset_learns_the_builtin_corpus(tmp_path):
    out = tmp_path / "tiny"
    done = subprocess.run(
        [sys.executable, "-m", "hyperp", "train", "--out", str(out), "--train.progress", "false"],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    corpus = open_corpus(default_corpus())  # the cache the run prepared (or found)
    entropy = corpus.meta["unigram_entropy_nats"]
    # A unigram model cannot beat the entropy of the token distribution; a model that learns
    # context must. "Well below": by more than 1 nat (a factor e in perplexity).
    assert summary["val_loss"] < entropy - 1.0, (summary["val_loss"], entropy)
    assert summary["steps"] == 300 and summary["method"] == "hyperp"
