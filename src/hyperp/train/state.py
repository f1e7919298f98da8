"""The pieces of a run that a checkpoint holds, each with ``state_dict`` / ``load_state_dict``.

:class:`hyperp.train.checkpoint.Checkpointer` collects them by name: ``model``, ``optimizer``,
``scheduler`` (a ``torch.optim.lr_scheduler``), ``loader`` (:class:`hyperp.data.TrainLoader`),
``rng`` and ``counters``. Model and optimizer go through ``torch.distributed.checkpoint``'s
state-dict helpers, so that sharded (FSDP2) tensors stay sharded and are resharded on load. Every
value is a tensor or plain data (numbers, strings, lists, dicts): nothing needs unpickling.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

__all__ = ["ModelState", "OptimizerState", "RNGState", "RunCounters"]

# Optimizer state keyed by parameter name ("state.blocks.0.attn.q.weight.momentum_buffer"), so
# that it maps onto any sharding of the same model.
_OPTIMIZER_OPTIONS = StateDictOptions(flatten_optimizer_state_dict=True)


class ModelState:
    """The model's weights (local shards under FSDP2)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def state_dict(self) -> dict[str, Any]:
        return get_model_state_dict(self.model)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        set_model_state_dict(self.model, state)


class OptimizerState:
    """The optimizer's state and param-group settings, keyed by parameter name."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.model, self.optimizer = model, optimizer

    def state_dict(self) -> dict[str, Any]:
        return get_optimizer_state_dict(self.model, self.optimizer, options=_OPTIMIZER_OPTIONS)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        set_optimizer_state_dict(self.model, self.optimizer, state, options=_OPTIMIZER_OPTIONS)


class RNGState:
    """Every random generator of this process (torch, CUDA device, numpy, Python), as tensors.

    Each rank saves its own under ``rank<r>``. A run resumed on as many ranks restores each rank's
    generators exactly; on another number of ranks, a rank without a saved state of its own takes
    rank 0's (the trainer draws no training randomness from these generators: data order comes
    from the loader's seed and step).
    """

    def __init__(self, rank: int) -> None:
        self.rank = rank
        self.source = rank  # which rank's saved state to load; set by the checkpointer

    @property
    def key(self) -> str:
        return f"rank{self.source}"

    def state_dict(self) -> dict[str, Any]:
        version, python_state, gauss = random.getstate()
        _, keys, position, has_gauss, cached_gauss = np.random.get_state(legacy=True)
        state = {
            "torch": torch.get_rng_state(),
            "numpy_keys": torch.from_numpy(keys.astype(np.int64)),
            "numpy_position": int(position),
            "numpy_has_gauss": int(has_gauss),
            "numpy_gauss": float(cached_gauss),
            "python_version": int(version),
            "python_state": torch.tensor(python_state, dtype=torch.int64),
            "python_gauss": gauss,
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state()
        return {self.key: state}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        state = saved[self.key]
        torch.set_rng_state(state["torch"])
        np.random.set_state(
            (
                "MT19937",
                state["numpy_keys"].numpy().astype(np.uint32),
                state["numpy_position"],
                state["numpy_has_gauss"],
                state["numpy_gauss"],
            )
        )
        python_state = tuple(int(v) for v in state["python_state"].tolist())
        random.setstate((state["python_version"], python_state, state["python_gauss"]))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda"])


class RunCounters:
    """What the run reports that is not in the model: wall time so far, the last validation
    loss, and the window of recent training losses that ``summary.json``'s ``train_loss``
    averages (saved, so that a resumed run reports what an uninterrupted one would)."""

    def __init__(self, window: int = 20) -> None:
        self.window = window
        self.wall_time_s = 0.0
        self.val_loss: float | None = None
        self.losses: list[float] = []

    def record_loss(self, loss: float) -> None:
        self.losses = [*self.losses, loss][-self.window :]

    @property
    def train_loss(self) -> float | None:
        return sum(self.losses) / len(self.losses) if self.losses else None

    def state_dict(self) -> dict[str, Any]:
        return {"wall_time_s": self.wall_time_s, "val_loss": self.val_loss, "losses": self.losses}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.wall_time_s = float(state["wall_time_s"])
        self.val_loss = state["val_loss"]
        self.losses = [float(v) for v in state["losses"]][-self.window :]
