"""TrainLoader and validation_batches: determinism, ranks, resume, world-size independence."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hyperp.data import TokenSource, TrainLoader, open_corpus, validation_batches, write_llmc_shard

pytestmark = pytest.mark.filterwarnings("ignore:the validation split has only:UserWarning")


def _source(lengths=(5000, 3000, 50), seed=0) -> TokenSource:
    rng = np.random.default_rng(seed)
    shards = [rng.integers(0, 1000, size=n).astype(np.uint16) for n in lengths]
    return TokenSource(shards, [f"s{i}" for i in range(len(shards))])


def _batches(loader: TrainLoader, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [next(loader) for _ in range(count)]


def test_batches_are_shifted_windows_of_the_data():
    source = _source()
    loader = TrainLoader(source, batch_size=6, context=32, seed=1)
    inputs, targets = next(loader)
    assert inputs.shape == targets.shape == (6, 32)
    assert inputs.dtype == targets.dtype == torch.int64
    assert torch.equal(inputs[:, 1:], targets[:, :-1])
    assert loader.step == 1
    # Each row is a run of consecutive tokens of one shard.
    flat = [shard.astype(np.int64) for shard in source.shards]
    for row_inputs, row_targets in zip(inputs.numpy(), targets.numpy()):
        window = np.concatenate([row_inputs, row_targets[-1:]])
        found = any(
            np.array_equal(shard[start : start + 33], window)
            for shard in flat
            for start in np.flatnonzero(shard[: len(shard) - 32] == window[0])
        )
        assert found


def test_loader_is_deterministic_and_seed_dependent():
    source = _source()
    first = _batches(TrainLoader(source, batch_size=4, context=16, seed=7), 5)
    again = _batches(TrainLoader(source, batch_size=4, context=16, seed=7), 5)
    other = _batches(TrainLoader(source, batch_size=4, context=16, seed=8), 5)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(first, other))
    # Successive steps draw different windows.
    assert not torch.equal(first[0][0], first[1][0])


def test_ranks_are_disjoint_and_together_equal_one_rank():
    source = _source()
    single = _batches(TrainLoader(source, batch_size=8, context=16, seed=3), 4)
    for world_size in (2, 4):
        loaders = [
            TrainLoader(source, batch_size=8, context=16, seed=3, rank=r, world_size=world_size)
            for r in range(world_size)
        ]
        for step in range(4):
            parts = [next(loader) for loader in loaders]
            assert all(part[0].shape == (8 // world_size, 16) for part in parts)
            assert torch.equal(torch.cat([p[0] for p in parts]), single[step][0])
            assert torch.equal(torch.cat([p[1] for p in parts]), single[step][1])
    # Disjoint rows: each rank's slice of the global draw is its own (no row index shared).
    windows = [
        TrainLoader(source, batch_size=8, context=16, seed=3, rank=r, world_size=2).window_indices(
            0
        )
        for r in range(2)
    ]
    reference = TrainLoader(source, batch_size=8, context=16, seed=3).window_indices(0)
    assert np.array_equal(np.concatenate(windows), reference)


def test_resume_from_state_dict_sees_the_same_batches():
    source = _source()
    straight = TrainLoader(source, batch_size=4, context=16, seed=5)
    expected = _batches(straight, 10)
    first_half = TrainLoader(source, batch_size=4, context=16, seed=5)
    _batches(first_half, 6)
    state = first_half.state_dict()
    resumed = TrainLoader(source, batch_size=4, context=16, seed=5, rank=1, world_size=2)
    resumed.load_state_dict(state)
    assert resumed.step == 6
    partner = TrainLoader(source, batch_size=4, context=16, seed=5, rank=0, world_size=2)
    partner.load_state_dict(state)
    for step in range(6, 10):
        inputs = torch.cat([next(partner)[0], next(resumed)[0]])
        assert torch.equal(inputs, expected[step][0])
    with pytest.raises(ValueError, match="checkpoint has seed=5"):
        TrainLoader(source, batch_size=4, context=16, seed=6).load_state_dict(state)
    with pytest.raises(ValueError, match="context"):
        TrainLoader(source, batch_size=4, context=8, seed=5).load_state_dict(state)


def test_loader_errors_are_clear():
    source = _source()
    with pytest.raises(ValueError, match="not divisible by world_size 3"):
        TrainLoader(source, batch_size=8, context=16, world_size=3, rank=0)
    with pytest.raises(ValueError, match="rank 2 is outside"):
        TrainLoader(source, batch_size=8, context=16, world_size=2, rank=2)
    with pytest.raises(ValueError, match="no window of context"):
        TrainLoader(source, batch_size=2, context=6000)
    with pytest.raises(ValueError, match="batch_size"):
        TrainLoader(source, batch_size=0, context=16)


def test_loader_accepts_a_corpus_and_reads_llmc_shards(tmp_path):
    tokens = np.arange(4000) % 50257
    write_llmc_shard(tmp_path / "data_train_000000.bin", tokens)
    write_llmc_shard(tmp_path / "data_val_000000.bin", tokens[:500])
    corpus = open_corpus(tmp_path)
    inputs, targets = next(TrainLoader(corpus, batch_size=2, context=64))
    # Consecutive ids in this data, so each target is its input plus one.
    assert torch.equal(targets, inputs + 1)
    val_inputs, _ = next(validation_batches(corpus, batch_size=2, context=64, max_batches=1))
    assert val_inputs[0, 0] == 0 and val_inputs[1, 0] == 64


def test_validation_windows_are_consecutive_and_non_overlapping():
    source = _source(lengths=(700, 300))
    batches = list(validation_batches(source, batch_size=4, context=50, max_batches=None))
    # (1000 - 1) // 50 = 19 windows: batches of 4, 4, 4, 4, 3.
    assert [b[0].shape[0] for b in batches] == [4, 4, 4, 4, 3]
    inputs = torch.cat([b[0] for b in batches]).reshape(-1)
    targets = torch.cat([b[1] for b in batches]).reshape(-1)
    tokens = torch.from_numpy(source[:].astype(np.int64))
    assert torch.equal(inputs, tokens[:950]) and torch.equal(targets, tokens[1:951])
    limited = list(validation_batches(source, batch_size=4, context=50, max_batches=2))
    assert len(limited) == 2 and torch.equal(limited[1][0], batches[1][0])


def test_validation_set_does_not_depend_on_world_size():
    source = _source(lengths=(2000,))

    def mean_of_ids(world_size: int, max_batches):
        total, count = 0.0, 0
        rows_seen = []
        for rank in range(world_size):
            for inputs, targets in validation_batches(
                source,
                batch_size=3,
                context=20,
                max_batches=max_batches,
                rank=rank,
                world_size=world_size,
            ):
                # A stand-in for the summed token loss: any per-token quantity works.
                total += float(targets.double().sum())
                count += targets.numel()
                rows_seen.extend(map(tuple, inputs.tolist()))
        return total / count, sorted(rows_seen)

    for max_batches in (None, 5):
        reference_mean, reference_rows = mean_of_ids(1, max_batches)
        for world_size in (2, 3, 4):
            mean, rows = mean_of_ids(world_size, max_batches)
            assert rows == reference_rows
            assert mean == pytest.approx(reference_mean, rel=1e-12)


def test_validation_errors():
    with pytest.raises(ValueError, match="validation split has 10 tokens"):
        list(validation_batches(_source(lengths=(10,)), batch_size=2, context=16, max_batches=None))
    empty = TokenSource([], [])
    with pytest.raises(ValueError, match="larger --val-fraction"):
        list(validation_batches(empty, batch_size=2, context=16, max_batches=None))
