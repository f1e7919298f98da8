import os
from pathlib import Path

import pytest
import torch

from support import prepare_small_corpus

# Newton-Schulz precision on a CPU is measured per machine (hyperp.optim.precision); pin it so
# that results and tolerances do not depend on the machine the tests run on.
os.environ.setdefault("HYPERP_CPU_NS_DTYPE", "fp32")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """A small real corpus (``support.prepare_small_corpus``), shared by the whole session."""
    return prepare_small_corpus(tmp_path_factory.mktemp("corpus") / "tokens")
