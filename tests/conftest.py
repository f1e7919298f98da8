import os

import pytest
import torch

# Newton-Schulz precision on a CPU is measured per machine (hyperp.optim.precision); pin it so
# that results and tolerances do not depend on the machine the tests run on.
os.environ.setdefault("HYPERP_CPU_NS_DTYPE", "fp32")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
