"""hyperp: transferable hypersphere optimization (HyperP) for language models.

See docs/method.md for the method; the public entry points are ``hyperp.optim`` (MuonH, AdamH, the
Muon baseline, parameter roles), ``hyperp.rules`` (transfer rules), ``hyperp.load_run`` (a
trained run directory as model, config, tokenizer, step and metrics) and the ``hyperp`` CLI.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "load_run"]


def __getattr__(name: str) -> Any:
    # Imported on first use, so that ``import hyperp`` stays free of torch.
    if name == "load_run":
        from hyperp.serve.run import load_run

        return load_run
    raise AttributeError(f"module 'hyperp' has no attribute {name!r}")
