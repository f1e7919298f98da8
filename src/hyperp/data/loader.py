"""Batches for training and evaluation from a memory-mapped :class:`TokenSource`.

Training (:class:`TrainLoader`): each step draws the GLOBAL batch's window starts from a generator
seeded by ``(seed, step)`` alone; rank ``r`` of ``world_size`` takes rows
``[r·b, (r+1)·b)`` with ``b = batch_size // world_size``. Hence

- any number of ranks together see exactly the rows a single process sees (same global batch),
- ranks never share a row of a step,
- the loader's whole state is the step counter: a resumed run sees exactly the batches it would
  have seen.

Evaluation (:func:`validation_batches`): the validation split is cut from its start into
non-overlapping windows, grouped into a fixed list of batches that does not depend on the number
of processes; rank ``r`` evaluates batches ``r, r + world_size, ...``. The trainer computes, on each
rank, the sum of per-token losses and the number of target tokens over its batches, all-reduces
both sums (``SUM``), and divides: that equals the single-process mean exactly (up to float
rounding), whatever ``world_size`` is.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from hyperp.data.corpus import Corpus, TokenSource

__all__ = ["TrainLoader", "validation_batches"]

# Mixed into the seed sequence so that the loader's stream differs from other users of `seed`.
_LOADER_STREAM = 0x6C6F6164


def _as_source(source: TokenSource | Corpus, split: str) -> TokenSource:
    if isinstance(source, Corpus):
        return getattr(source, split)
    if not isinstance(source, TokenSource):
        raise TypeError(f"expected a TokenSource or Corpus, got {type(source).__name__}")
    return source


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive integer, not {value!r}")


def _check_ranks(rank: int, world_size: int) -> None:
    _check_positive("world_size", world_size)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside 0..{world_size - 1} (world_size {world_size})")


def _to_torch(array: np.ndarray, device, pin_memory: bool) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if pin_memory and torch.cuda.is_available():
        tensor = tensor.pin_memory()
    if device is not None:
        tensor = tensor.to(device, non_blocking=pin_memory)
    return tensor


class TrainLoader:
    """Random training windows of ``context + 1`` tokens, deterministic per step and rank-aware.

    Args:
        source: the training split (a :class:`TokenSource`, or a :class:`Corpus`, whose
            ``train`` is used).
        batch_size: GLOBAL number of sequences per step; each rank gets
            ``batch_size // world_size`` rows (``batch_size`` must be divisible by it).
        context: sequence length; each row is a window of ``context + 1`` tokens that gives
            ``inputs = window[:-1]`` and ``targets = window[1:]``.
        seed: with the step number, fixes every window drawn.
        rank, world_size: this process's data-parallel position.
        device: optional device the tensors are moved to; ``pin_memory`` pins them first (CUDA).

    ``next(loader)`` returns ``(inputs, targets)``, int64 tensors of shape
    ``(batch_size // world_size, context)``, and advances ``loader.step``. ``batch_at(step)``
    returns a step's batch without touching ``step``. ``state_dict()`` / ``load_state_dict()``
    save and restore the position (the step, plus the settings checked on restore).
    Windows lie inside one shard; a window may span document boundaries (EOT ids separate them).
    """

    def __init__(
        self,
        source: TokenSource | Corpus,
        *,
        batch_size: int,
        context: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        device: str | torch.device | None = None,
        pin_memory: bool = False,
    ):
        self.source = _as_source(source, "train")
        _check_positive("batch_size", batch_size)
        _check_positive("context", context)
        _check_ranks(rank, world_size)
        if batch_size % world_size:
            raise ValueError(
                f"global batch_size {batch_size} is not divisible by world_size {world_size}; "
                f"use a multiple of {world_size}"
            )
        if not isinstance(seed, int | np.integer) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, not {seed!r}")
        self.window_tokens = context + 1
        self.window_count = self.source.count_windows(self.window_tokens)
        if self.window_count == 0:
            longest = max((len(shard) for shard in self.source.shards), default=0)
            raise ValueError(
                f"the training split has no window of context+1 = {self.window_tokens} tokens "
                f"(longest shard: {longest} tokens); use a shorter context or more data"
            )
        self.batch_size = int(batch_size)
        self.local_batch_size = self.batch_size // world_size
        self.context = int(context)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.device = device
        self.pin_memory = pin_memory
        self.step = 0

    def window_indices(self, step: int) -> np.ndarray:
        """This rank's window indices (see ``TokenSource.gather_windows``) for ``step``."""
        generator = np.random.Generator(
            np.random.PCG64(np.random.SeedSequence([self.seed, int(step), _LOADER_STREAM]))
        )
        global_windows = generator.integers(0, self.window_count, size=self.batch_size)
        first = self.rank * self.local_batch_size
        return global_windows[first : first + self.local_batch_size]

    def batch_at(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``(inputs, targets)`` of ``step`` for this rank; does not change ``self.step``."""
        windows = self.source.gather_windows(self.window_indices(step), self.window_tokens)
        inputs = _to_torch(windows[:, :-1], self.device, self.pin_memory)
        targets = _to_torch(windows[:, 1:], self.device, self.pin_memory)
        return inputs, targets

    def __iter__(self) -> TrainLoader:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.batch_at(self.step)
        self.step += 1
        return batch

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next batch (same as ``next(loader)``)."""
        return self.__next__()

    def state_dict(self) -> dict[str, Any]:
        """The loader's position; the settings are stored to refuse an inexact resume."""
        return {
            "step": self.step,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "context": self.context,
            "source_tokens": len(self.source),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at ``state["step"]``; the global batch, context, seed and data must match.

        ``world_size`` may differ: the global batch of every step is the same for any number of
        ranks.
        """
        current = self.state_dict()
        for key in ("seed", "batch_size", "context", "source_tokens"):
            if key in state and state[key] != current[key]:
                raise ValueError(
                    f"cannot resume the data loader exactly: the checkpoint has {key}="
                    f"{state[key]}, this run has {current[key]}; use the checkpoint's settings "
                    "and data"
                )
        step = int(state["step"])
        if step < 0:
            raise ValueError(f"loader state has a negative step {step}")
        self.step = step


def validation_batches(
    source: TokenSource | Corpus,
    *,
    batch_size: int,
    context: int,
    max_batches: int | None,
    rank: int = 0,
    world_size: int = 1,
    device: str | torch.device | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield this rank's share of a fixed list of validation batches ``(inputs, targets)``.

    The validation split (a :class:`TokenSource`, or a :class:`Corpus`, whose ``val`` is used) is
    cut from its start into non-overlapping windows: window ``i`` has inputs
    ``tokens[i·context : (i+1)·context]`` and targets shifted by one. Windows are grouped into
    batches of ``batch_size`` rows (the last batch may have fewer), and only the first
    ``max_batches`` batches are kept (all when None). That list does not depend on
    ``world_size``; rank ``r`` gets batches ``r, r + world_size, r + 2·world_size, ...`` (some
    ranks may get one batch fewer, or none). Combine ranks by all-reducing the summed token loss
    and the token count, then dividing (see the module docstring).
    """
    split = _as_source(source, "val")
    _check_positive("batch_size", batch_size)
    _check_positive("context", context)
    _check_ranks(rank, world_size)
    if max_batches is not None:
        _check_positive("max_batches", max_batches)
    window_count = (len(split) - 1) // context if len(split) > 1 else 0
    if window_count == 0:
        raise ValueError(
            f"the validation split has {len(split)} tokens, fewer than context+1 = {context + 1}; "
            "prepare with a larger --val-fraction or use a shorter context"
        )
    batch_count = -(-window_count // batch_size)
    if max_batches is not None:
        batch_count = min(batch_count, max_batches)
    for batch_index in range(rank, batch_count, world_size):
        first_window = batch_index * batch_size
        rows = min(batch_size, window_count - first_window)
        start = first_window * context
        tokens = np.asarray(split[start : start + rows * context + 1], dtype=np.int64)
        inputs = tokens[:-1].reshape(rows, context)
        targets = tokens[1:].reshape(rows, context)
        yield _to_torch(inputs, device, False), _to_torch(targets, device, False)
