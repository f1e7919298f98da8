"""Whole-matrix work of MuonH and Muon, split across data-parallel ranks (docs/method.md §4.1).

Elementwise work (momentum, Adam moments, the sphere step's scaling) runs on each rank's own rows
of every parameter. Newton-Schulz needs whole matrices, so every matrix -- a 2-D parameter, or one
slice of an expert bank -- has one owner rank. The owner receives the rows the other ranks hold,
orthogonalizes all its matrices (same shapes batched), and sends each rank its rows of the result.
Per-matrix norms that the sphere step needs are sums of per-rank partial sums: one small
all-reduce.

The ranks form a grid of ``replicas x shards``. FSDP2 shards every parameter's dim 0 over the
shard group (a 1-D mesh); DDP replicates parameters over the replica group; HSDP does both (a 2-D
mesh). Owners are spread over the whole grid by a greedy balance of Newton-Schulz FLOPs that
depends on shapes alone, so every rank computes the same plan without talking. A bank slice lives
whole on one shard (FSDP2 shards dim 0, the expert dimension), so its owner is one of the replicas
of that shard and its rows never travel within a replica.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

__all__ = ["Grid", "MatrixLayout", "StepStats", "WorkPlan", "grid_of", "local", "ns_flops"]


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's part of a tensor: the local shard of a DTensor (a view), else the tensor."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


@dataclass(frozen=True)
class Grid:
    """This rank's place among the ranks that hold one parameter: ``replicas x shards``."""

    shard_group: dist.ProcessGroup | None = None
    shard_size: int = 1
    shard_rank: int = 0
    replica_group: dist.ProcessGroup | None = None
    replica_size: int = 1
    replica_rank: int = 0

    @property
    def size(self) -> int:
        return self.shard_size * self.replica_size

    @property
    def rank(self) -> int:
        """Position in the grid: ``replica * shard_size + shard`` (an owner index)."""
        return self.replica_rank * self.shard_size + self.shard_rank

    @property
    def members(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The global ranks of the shard and replica groups: equal grids have equal members
        (FSDP2 may hand two parameters of one mesh distinct group objects)."""
        return tuple(
            tuple(dist.get_process_group_ranks(group)) if group is not None else ()
            for group in (self.shard_group, self.replica_group)
        )


def grid_of(param: torch.Tensor, replicate_group: dist.ProcessGroup | None) -> Grid:
    """The grid of a parameter: from a DTensor's mesh and placements (FSDP2, HSDP), or, for a
    plain tensor, replicated over ``replicate_group`` (DDP) or held by this rank alone."""
    if not isinstance(param, DTensor):
        if replicate_group is None:
            return Grid()
        return Grid(
            replica_group=replicate_group,
            replica_size=dist.get_world_size(replicate_group),
            replica_rank=dist.get_rank(replicate_group),
        )
    mesh, values = param.device_mesh, {}
    for dim, placement in enumerate(param.placements):
        if placement.is_shard() and placement.dim == 0 and "shard" not in values:
            kind = "shard"
        elif placement.is_replicate() and "replica" not in values:
            kind = "replica"
        else:
            raise ValueError(
                f"hyperp optimizers support parameters sharded on dim 0 (FSDP2) and/or replicated "
                f"(HSDP); got placements {param.placements}. Shard with fully_shard's default "
                "placement."
            )
        values[kind] = (mesh.get_group(dim), mesh.size(dim), mesh.get_local_rank(dim))
    shard = values.get("shard", (None, 1, 0))
    replica = values.get("replica", (None, 1, 0))
    return Grid(*shard, *replica)


def ns_flops(rows: int, cols: int, steps: int) -> float:
    """Multiply-add FLOPs of Newton-Schulz on one matrix (wide orientation ``m <= n``): per step
    ``A = X Xᵀ`` (2m²n), ``A·A`` (2m³) and ``(bA + cA²)·X`` (2m²n)."""
    m, n = min(rows, cols), max(rows, cols)
    return steps * (4.0 * m * m * n + 2.0 * m**3)


@dataclass(frozen=True)
class MatrixLayout:
    """How one parameter reads as ``count`` matrices of ``rows x cols``, and who holds what.

    ``split``: a single matrix (a 2-D parameter, or a flattened kernel) whose rows are spread over
    the shard group. Otherwise a bank: dim 0 indexes slices, ``per_row`` slices per index of
    dim 0, and every slice lives whole on one shard. ``row_ranges[s]`` is shard ``s``'s range of
    dim 0, as FSDP2 (``torch.chunk``) splits it.
    """

    count: int
    rows: int
    cols: int
    split: bool
    per_row: int
    row_ranges: tuple[tuple[int, int], ...]

    @classmethod
    def of(cls, shape: Sequence[int], layout: str, shard_size: int) -> MatrixLayout:
        length = shape[0]
        chunk = math.ceil(length / shard_size) if length else 0
        ranges = tuple(
            (min(length, s * chunk), min(length, (s + 1) * chunk)) for s in range(shard_size)
        )
        if layout == "flatten" or len(shape) == 2:
            return cls(1, shape[0], math.prod(shape[1:]), True, 0, ranges)
        count = math.prod(shape[:-2])
        return cls(count, shape[-2], shape[-1], False, count // length, ranges)

    def slices_on(self, shard: int) -> tuple[int, int]:
        """Global range of the slices shard ``shard`` holds (the one matrix, for ``split``)."""
        if self.split:
            return (0, 1)
        start, end = self.row_ranges[shard]
        return (start * self.per_row, end * self.per_row)

    def rows_on(self, shard: int) -> int:
        """Rows of the (split) matrix that shard ``shard`` holds."""
        start, end = self.row_ranges[shard]
        return end - start

    def holder(self, index: int) -> int:
        """The shard holding bank slice ``index``."""
        row = index // self.per_row
        return next(s for s, (start, end) in enumerate(self.row_ranges) if start <= row < end)

    def view(self, tensor: torch.Tensor) -> torch.Tensor:
        """``(local slices, local rows, cols)`` view of this rank's part of the parameter."""
        # view, not reshape: in-place updates must land in the parameter (never in a copy).
        if self.split:  # (also when ``tensor`` is such a view already)
            return tensor.view(1, tensor.numel() // self.cols, self.cols)
        return tensor.view(tensor.numel() // (self.rows * self.cols), self.rows, self.cols)


@dataclass
class StepStats:
    """What one optimizer step did on this rank (for tests and benchmarks)."""

    orthogonalized: list[tuple[int, int, int]] = field(default_factory=list)  # group, param, slice
    ns_flops: float = 0.0
    sent_bytes: int = 0
    received_bytes: int = 0


Unit = tuple[int, int]  # (parameter index in the group, slice index)

# Most elements one bucket of the exchange holds (16 MB of fp32): small enough that the owners'
# Newton-Schulz of one bucket overlaps the exchange of the next, large enough for few calls.
BUCKET_ELEMENTS = 1 << 22


def _buckets(units: list[Unit], layouts: list[MatrixLayout]) -> list[list[Unit]]:
    """Units in buckets of one matrix shape each (Newton-Schulz batches a bucket in one call),
    cut at ``BUCKET_ELEMENTS``; smallest matrices first, so that the first exchange, which
    nothing overlaps, is short."""
    by_shape: dict[tuple[int, int], list[Unit]] = defaultdict(list)
    for unit in units:
        layout = layouts[unit[0]]
        by_shape[(layout.rows, layout.cols)].append(unit)
    buckets = []
    for (rows, cols), members in sorted(by_shape.items(), key=lambda item: item[0][0] * item[0][1]):
        per_bucket = max(1, BUCKET_ELEMENTS // (rows * cols))
        buckets += [members[i : i + per_bucket] for i in range(0, len(members), per_bucket)]
    return buckets


class WorkPlan:
    """Who orthogonalizes which matrix of one param group, and where every piece travels.

    Built from shapes alone: identical on every rank. Greedy longest-processing-time balance of
    Newton-Schulz FLOPs; a bank slice may only go to a replica of the shard that holds it.
    """

    def __init__(self, layouts: list[MatrixLayout], grid: Grid, ns_steps: int) -> None:
        self.layouts, self.grid, self.ns_steps = layouts, grid, ns_steps
        units = [(i, j) for i, layout in enumerate(layouts) for j in range(layout.count)]
        cost = {u: ns_flops(layouts[u[0]].rows, layouts[u[0]].cols, ns_steps) for u in units}
        load = [0.0] * grid.size
        self.owner: dict[Unit, int] = {}
        for unit in sorted(units, key=lambda u: (-cost[u], u)):
            layout = layouts[unit[0]]
            if layout.split:
                candidates = range(grid.size)
            else:
                shard = layout.holder(unit[1])
                candidates = [r * grid.shard_size + shard for r in range(grid.replica_size)]
            best = min(candidates, key=lambda owner: (load[owner], owner))
            self.owner[unit] = best
            load[best] += cost[unit]
        self.load = load
        self.units = sorted(units)
        self.split_units = [u for u in self.units if layouts[u[0]].split]
        self.mine = [u for u in self.units if self.owner[u] == grid.rank]
        self.buckets = _buckets(self.units, layouts)

    def replica_of(self, unit: Unit) -> int:
        return self.owner[unit] // self.grid.shard_size

    def shard_of(self, unit: Unit) -> int:
        return self.owner[unit] % self.grid.shard_size

    def held_here(self, unit: Unit, replica: int) -> bool:
        """Whether ``unit`` has rows on this rank's shard and is owned by ``replica``."""
        layout = self.layouts[unit[0]]
        if self.replica_of(unit) != replica:
            return False
        return layout.split or self.shard_of(unit) == self.grid.shard_rank

    def size_here(self, unit: Unit) -> int:
        """Elements of ``unit`` on this rank's shard."""
        layout = self.layouts[unit[0]]
        rows = layout.rows_on(self.grid.shard_rank) if layout.split else layout.rows
        return rows * layout.cols


def _piece(views: list[torch.Tensor], plan: WorkPlan, unit: Unit) -> torch.Tensor:
    """This rank's part of ``unit`` from the parameters' local ``(slices, rows, cols)`` views."""
    index, slice_index = unit
    layout = plan.layouts[index]
    first = layout.slices_on(plan.grid.shard_rank)[0]
    return views[index][slice_index - first]


class _Exchange:
    """One all-to-all over the shard group, started asynchronously: ``send[d]`` (flat pieces)
    goes to shard ``d``; :meth:`wait` returns the flat pieces received from each shard."""

    def __init__(self, send, receive_sizes, grid: Grid, like: torch.Tensor, stats: StepStats):
        flat = [p.reshape(-1).to(like.dtype) for pieces in send for p in pieces]
        self.send_buffer = torch.cat(flat) if flat else like.new_empty(0)
        in_splits = [sum(p.numel() for p in pieces) for pieces in send]
        out_splits = [sum(sizes) for sizes in receive_sizes]
        self.receive = like.new_empty(sum(out_splits))
        self.receive_sizes = receive_sizes
        self.work = dist.all_to_all_single(
            self.receive, self.send_buffer, out_splits, in_splits, group=grid.shard_group,
            async_op=True,
        )  # fmt: skip
        me, size = grid.shard_rank, self.receive.element_size()  # what stays is not traffic
        stats.sent_bytes += (sum(in_splits) - in_splits[me]) * size
        stats.received_bytes += (sum(out_splits) - out_splits[me]) * size

    def wait(self) -> list[list[torch.Tensor]]:
        self.work.wait()
        flat = self.receive.split([n for sizes in self.receive_sizes for n in sizes])
        out, start = [], 0
        for sizes in self.receive_sizes:
            out.append(list(flat[start : start + len(sizes)]))
            start += len(sizes)
        return out


def _start_gather(plan: WorkPlan, bucket: list[Unit], views, like, stats) -> _Exchange | None:
    """Send this rank's rows of the bucket's split units to their owners (None: nothing to
    exchange, on every rank alike)."""
    grid = plan.grid
    split = [u for u in bucket if plan.layouts[u[0]].split]
    if grid.shard_size == 1 or not split:
        return None
    ours = [u for u in split if plan.replica_of(u) == grid.replica_rank]
    mine = [u for u in split if plan.owner[u] == grid.rank]
    send = [
        [_piece(views, plan, u) for u in ours if plan.shard_of(u) == d]
        for d in range(grid.shard_size)
    ]
    sizes = [
        [plan.layouts[u[0]].rows_on(s) * plan.layouts[u[0]].cols for u in mine]
        for s in range(grid.shard_size)
    ]
    return _Exchange(send, sizes, grid, like, stats)


def _whole_matrices(plan: WorkPlan, bucket, views, gather, like) -> dict[Unit, torch.Tensor]:
    """The bucket's matrices this rank owns, whole: split ones assembled from every shard's rows
    (``gather``'s result), bank slices from this rank's own part."""
    grid = plan.grid
    mine = [u for u in bucket if plan.owner[u] == grid.rank]
    received = gather.wait() if gather is not None else None
    whole, k = {}, 0
    for unit in mine:
        layout = plan.layouts[unit[0]]
        if layout.split and received is not None:
            rows = [
                received[s][k].view(layout.rows_on(s), layout.cols) for s in range(grid.shard_size)
            ]
            whole[unit] = torch.cat(rows)
            k += 1
        else:
            whole[unit] = _piece(views, plan, unit).to(like.dtype)
    return whole


def _start_scatter(plan: WorkPlan, bucket, results, like, stats) -> _Exchange | None:
    """Send every rank its rows of the bucket's orthogonalized split units this rank owns."""
    grid = plan.grid
    split = [u for u in bucket if plan.layouts[u[0]].split]
    if grid.shard_size == 1 or not split:
        return None
    mine = [u for u in split if plan.owner[u] == grid.rank]
    send = [
        [results[u][slice(*plan.layouts[u[0]].row_ranges[d])] for u in mine]
        for d in range(grid.shard_size)
    ]
    ours = [u for u in split if plan.replica_of(u) == grid.replica_rank]
    by_shard = [[u for u in ours if plan.shard_of(u) == s] for s in range(grid.shard_size)]
    sizes = [[plan.size_here(u) for u in units] for units in by_shard]
    exchange = _Exchange(send, sizes, grid, like, stats)
    exchange.units = by_shard
    return exchange


def _exchange_replicas(plan: WorkPlan, results, like, stats) -> dict[Unit, torch.Tensor]:
    """Results of the units other replicas own, for this rank's shard (an all-gather)."""
    grid = plan.grid
    if grid.replica_size == 1:
        return results
    owned = [[u for u in plan.units if plan.held_here(u, r)] for r in range(grid.replica_size)]
    lengths = [sum(plan.size_here(u) for u in units) for units in owned]
    width = max(lengths)
    mine = [results[u].reshape(-1).to(like.dtype) for u in owned[grid.replica_rank]]
    buffer = like.new_zeros(width)
    if mine:
        torch.cat(mine, out=buffer[: lengths[grid.replica_rank]])
    gathered = buffer.new_empty(width * grid.replica_size)
    dist.all_gather_single(gathered, buffer, group=grid.replica_group)
    others = grid.replica_size - 1  # this rank's results reach each other replica once
    stats.sent_bytes += others * lengths[grid.replica_rank] * buffer.element_size()
    stats.received_bytes += (sum(lengths) - lengths[grid.replica_rank]) * buffer.element_size()
    out = dict(results)
    for replica, units in enumerate(owned):
        offset = replica * width
        for unit in units:
            size = plan.size_here(unit)
            out[unit] = gathered[offset : offset + size]
            offset += size
    return out


def orthogonalize(
    plan: WorkPlan,
    updates: list[torch.Tensor],
    newton_schulz: Callable[[torch.Tensor], torch.Tensor],
    stats: StepStats,
    group_index: int = 0,
    dtype: torch.dtype | None = None,
) -> list[torch.Tensor]:
    """Newton-Schulz of every matrix of ``updates`` (this rank's parts), done by the owners.

    Matrices travel in ``dtype`` (Newton-Schulz's working precision; default the updates'),
    bucket by bucket: while the owners orthogonalize one bucket, the rows of the next are on
    their way and the results of the last on their way back. Returns, for each parameter, the
    orthogonalized update restricted to this rank's part, in the shape and dtype of that part.
    """
    like = updates[0].new_empty(0, dtype=dtype or updates[0].dtype)
    views = [layout.view(u) for layout, u in zip(plan.layouts, updates)]
    results: dict[Unit, torch.Tensor] = {}
    scatters: list[_Exchange] = []
    gather = _start_gather(plan, plan.buckets[0], views, like, stats) if plan.buckets else None
    for k, bucket in enumerate(plan.buckets):
        whole = _whole_matrices(plan, bucket, views, gather, like)
        if k + 1 < len(plan.buckets):  # in flight while this bucket is orthogonalized
            gather = _start_gather(plan, plan.buckets[k + 1], views, like, stats)
        if whole:  # one shape per bucket: one batched call
            units = list(whole)
            stacked = newton_schulz(torch.stack([whole[u] for u in units]))
            results.update(zip(units, stacked.unbind(0)))
            shape = tuple(whole[units[0]].shape)
            stats.ns_flops += len(units) * ns_flops(*shape, plan.ns_steps)
            stats.orthogonalized += [(group_index, *u) for u in units]
        scatter = _start_scatter(plan, bucket, results, like, stats)
        if scatter is not None:
            scatters.append(scatter)
    for scatter in scatters:
        for units, pieces in zip(scatter.units, scatter.wait()):
            results.update(zip(units, pieces))
    results = _exchange_replicas(plan, results, like, stats)
    outputs = []
    for index, (layout, update) in enumerate(zip(plan.layouts, updates)):
        out = torch.empty_like(update)
        out_view = layout.view(out)
        first, last = layout.slices_on(plan.grid.shard_rank)
        for slice_index in range(first, last):
            out_view[slice_index - first].copy_(results[(index, slice_index)].view_as(out_view[0]))
        outputs.append(out)
    return outputs


def _local_slice_norms(
    layouts: list[MatrixLayout], tensors: list[torch.Tensor]
) -> list[torch.Tensor]:
    """Frobenius norm (fp32) of every slice of this rank's part of each tensor: one
    multi-tensor norm for all parts that hold one matrix, one batched norm per bank."""
    views = [layout.view(tensor) for layout, tensor in zip(layouts, tensors)]
    single = [i for i, view in enumerate(views) if view.shape[0] == 1]
    norms: list[torch.Tensor | None] = [None] * len(views)
    if single:
        whole = torch._foreach_norm([views[i] for i in single], 2, dtype=torch.float32)
        for i, norm in zip(single, whole):
            norms[i] = norm.reshape(1)
    for i, view in enumerate(views):
        if norms[i] is None:
            norms[i] = torch.linalg.vector_norm(view, dim=(-2, -1), dtype=torch.float32)
    return norms


def reduce_slice_norms(
    layouts: list[MatrixLayout],
    grid: Grid,
    tensors: list[torch.Tensor],
    stats: StepStats | None = None,
) -> list[torch.Tensor]:
    """Frobenius norm of every matrix (all ``count`` slices of each parameter, in fp32), from
    this rank's parts: partial sums of squares, summed over the shard group in one all-reduce."""
    norms = _local_slice_norms(layouts, tensors)
    if grid.shard_size == 1:
        return norms
    # One vector of every slice of every parameter, zero where another shard holds the slice.
    zeros = norms[0].new_zeros(max(layout.count for layout in layouts))
    pieces = []
    for layout, norm in zip(layouts, norms):
        first, last = layout.slices_on(grid.shard_rank)
        pieces += [zeros[:first], norm, zeros[: layout.count - last]]
    flat = torch.cat(pieces).square_()
    dist.all_reduce(flat, group=grid.shard_group)
    if stats is not None:
        stats.sent_bytes += flat.numel() * flat.element_size()
        stats.received_bytes += flat.numel() * flat.element_size()
    return list(flat.sqrt_().split([layout.count for layout in layouts]))
