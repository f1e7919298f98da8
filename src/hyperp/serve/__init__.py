"""Using a trained run: load it, sample from it, evaluate it, export it, plot its curves.

- :func:`load_run` gives the model, config, tokenizer, step and metrics of a run directory.
- :mod:`hyperp.serve.generation`: streamed sampling of text (``hyperp generate``).
- :mod:`hyperp.serve.evaluation`: loss, perplexity and bits per byte on text (``hyperp eval``).
- :mod:`hyperp.serve.export`: a Hugging Face model directory (``hyperp export``; extra ``hf``).
- :mod:`hyperp.serve.lm_eval`: the ``hyperp`` model type of lm-evaluation-harness (extra ``eval``).
- :mod:`hyperp.serve.curves`: training curves of runs and sweeps (``hyperp plot``; no torch).

Names are imported lazily, so reading metrics or plotting does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["LoadedRun", "load_run", "read_metrics"]

_HOMES = {"LoadedRun": "hyperp.serve.run", "load_run": "hyperp.serve.run"}
_HOMES["read_metrics"] = "hyperp.serve.metrics"


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'hyperp.serve' has no attribute {name!r}")
