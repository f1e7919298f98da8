"""The run's config layer loads no torch: reading a config, overrides and the plan of the own
family with its data's vocabulary, and the sweep and reproduction packages, in a fresh
interpreter."""

import subprocess
import sys

from support import subprocess_env

_CHECK = """
import sys
import hyperp.reproduce, hyperp.sweep
from hyperp.train.config import load_config, parse_overrides
from hyperp.data import data_vocab_size
config = load_config("tiny", ["--model.width", "64"])
plan = config.resolve(data_vocab_size(config)).plan()
assert plan.params > 0 and parse_overrides(["--train.steps", "3"]) == {"train": {"steps": 3}}
loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
assert not loaded, loaded[:5]
"""


def test_config_sweep_and_reproduce_load_no_torch():
    done = subprocess.run(
        [sys.executable, "-c", _CHECK], env=subprocess_env(), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
