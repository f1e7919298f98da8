import os
from pathlib import Path

import pytest
import torch

from hyperp.data import prepare

# Newton-Schulz precision on a CPU is measured per machine (hyperp.optim.precision); pin it so
# that results and tolerances do not depend on the machine the tests run on.
os.environ.setdefault("HYPERP_CPU_NS_DTYPE", "fp32")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """A small real corpus: a few standard-library modules, BPE vocab 512."""
    import sysconfig

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = [stdlib / name for name in ("argparse.py", "textwrap.py", "difflib.py", "shlex.py")]
    return prepare(
        files, tmp_path_factory.mktemp("corpus") / "tokens", vocab_size=512, val_fraction=0.3
    )
