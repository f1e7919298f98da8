import os
from pathlib import Path

import pytest
import torch

from hyperp.optim.precision import AUTOCAST_VARIABLE, ENVIRONMENT_VARIABLE, cpu_ns_choice
from support import prepare_small_corpus

# The suite runs in the Newton-Schulz precision this CPU chose (measured once per machine and
# cached, or pinned by HYPERP_CPU_NS_DTYPE). Every process the tests start inherits the choice,
# so none measures again. Tests that compare runs differing only in reduction order pin fp32
# themselves (tests/training.py, PIN_FP32).
_NS_DTYPE, _NS_REASON = cpu_ns_choice()
os.environ[ENVIRONMENT_VARIABLE] = "bf16" if torch.bfloat16 == _NS_DTYPE else "fp32"
# Training's forward and backward run without autocast unless a test asks (train.precision):
# the suite's results do not depend on this CPU's autocast choice (tests/test_speed.py tests it).
os.environ.setdefault(AUTOCAST_VARIABLE, "fp32")


def pytest_report_header(config):
    return f"hyperp: {_NS_REASON}"


def pytest_terminal_summary(terminalreporter):
    # Again at the end: `pytest -q` (the README's command) prints no header.
    terminalreporter.write_line(f"hyperp: {_NS_REASON}")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """A small real corpus (``support.prepare_small_corpus``), shared by the whole session."""
    return prepare_small_corpus(tmp_path_factory.mktemp("corpus") / "tokens")
