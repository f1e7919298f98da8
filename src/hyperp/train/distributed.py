"""Process groups and data parallelism: one process, torchrun, or SLURM's srun.

Launchers:

- ``torchrun`` (one node or many, c10d rendezvous): its ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``
  and ``MASTER_ADDR``/``MASTER_PORT`` are used as they are.
- ``srun`` without torchrun (one task per process): ``SLURM_PROCID``, the step's task count
  (``SLURM_STEP_NUM_TASKS``), ``SLURM_LOCALID`` and the first node of the step's node list as the
  master, on port ``MASTER_PORT`` or one derived from the job id.
- neither: one process.

Strategies (``train.distributed``): ``ddp`` (replicated parameters; the optimizer splits Newton-
Schulz across ranks), ``fsdp`` (FSDP2 ``fully_shard`` per block and at the root, on a 1-D mesh),
``hsdp`` (FSDP2 on a 2-D mesh: replicate across groups, shard within a group of
``train.shard_size`` ranks).
"""

from __future__ import annotations

import datetime
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["Distributed", "Parallel", "launch_environment", "parallelize", "setup_distributed"]


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    launcher: str = "single"  # "single", "torchrun" or "srun"

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum(self, values: list[float]) -> list[float]:
        """Sum a few floats over ranks (one small all-reduce); identity on one process."""
        if not self.enabled:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def broadcast_int(self, value: int) -> int:
        """Rank 0's ``value`` on every rank."""
        if not self.enabled:
            return value
        tensor = torch.tensor([value], dtype=torch.int64, device=self.device)
        dist.broadcast(tensor, src=0)
        return int(tensor.item())

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def _first_host(nodelist: str) -> str:
    """The first host of a SLURM node list such as ``gpu[012-015,020],cpu1``."""
    match = re.match(r"([^,\[]+)(\[([^\]]+)\])?", nodelist.strip())
    if not match:
        raise ValueError(f"cannot read the SLURM node list {nodelist!r}; set MASTER_ADDR")
    prefix, ranges = match.group(1), match.group(3)
    if ranges is None:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def launch_environment(env: Mapping[str, str]) -> dict[str, str] | None:
    """The torch.distributed variables of this process from its launcher's environment
    (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT and LAUNCHER), or None for a single
    process. Raises ValueError, naming the fix, when the variables contradict each other."""
    if "WORLD_SIZE" in env or "RANK" in env:
        return {key: env[key] for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK") if key in env} | {
            "LAUNCHER": "torchrun"
        }
    tasks = env.get("SLURM_STEP_NUM_TASKS") if "SLURM_STEP_ID" in env else None
    if tasks is None or int(tasks) <= 1:
        return None  # one process (a batch script itself is not an srun step)
    missing = [k for k in ("SLURM_PROCID", "SLURM_LOCALID") if k not in env]
    if missing:
        raise ValueError(
            f"srun started {tasks} tasks but {', '.join(missing)} is not set; start "
            "`srun hyperp train ...` directly, or use torchrun inside the allocation"
        )
    rank, world = int(env["SLURM_PROCID"]), int(tasks)
    if not 0 <= rank < world:
        raise ValueError(f"SLURM_PROCID {rank} is outside 0..{world - 1}; check the srun command")
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST")
    if not env.get("MASTER_ADDR") and not nodelist:
        raise ValueError(
            "srun started several tasks but neither MASTER_ADDR nor SLURM_JOB_NODELIST is set; "
            "export MASTER_ADDR=<first node> before srun"
        )
    job = int(env.get("SLURM_JOB_ID", "0"))
    return {
        "RANK": str(rank),
        "WORLD_SIZE": str(world),
        "LOCAL_RANK": env["SLURM_LOCALID"],
        "MASTER_ADDR": env.get("MASTER_ADDR") or _first_host(nodelist),
        "MASTER_PORT": env.get("MASTER_PORT") or str(20000 + job % 20000),
        "LAUNCHER": "srun",
    }


def _resolve_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                "train.device is cuda but no CUDA device is available; use train.device=cpu"
            )
        if device.index is None:
            # One visible GPU per task (srun --gpus-per-task) or all of the node's GPUs.
            device = torch.device(f"cuda:{local_rank % torch.cuda.device_count()}")
    return device


def setup_distributed(device: str = "auto") -> Distributed:
    """Read the launcher's environment; start the process group (NCCL on CUDA, gloo on CPU)."""
    found = launch_environment(os.environ)
    if found is None:
        return Distributed(device=_resolve_device(device, 0))
    launcher = found.pop("LAUNCHER")
    os.environ.update(found)
    rank, world_size = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    resolved = _resolve_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if resolved.type == "cuda":
            torch.cuda.set_device(resolved)
        # gloo is always there too: checkpoints written in the background use it.
        backend = "cpu:gloo,cuda:nccl" if resolved.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    return Distributed(rank, world_size, local_rank, resolved, launcher)


@dataclass
class Parallel:
    """A model prepared for data parallelism: the module to call, and the process group over
    which plain parameters are replicated (DDP; the optimizer's ``replicate_group``)."""

    module: nn.Module
    replicate_group: dist.ProcessGroup | None = None


def parallelize(model: nn.Module, dist_info: Distributed, strategy: str, shard_size: int = 0):
    """Wrap ``model`` for ``strategy``; FSDP2 shards each of the model's ``blocks`` (our
    transformer blocks, or a Hugging Face model's decoder layers), then the root."""
    if not dist_info.enabled:
        return Parallel(model)
    if strategy == "ddp":
        device_ids = [dist_info.device] if dist_info.device.type == "cuda" else None
        return Parallel(
            nn.parallel.DistributedDataParallel(model, device_ids=device_ids), dist.group.WORLD
        )
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    world = dist_info.world_size
    if strategy == "hsdp":
        if shard_size < 1 or world % shard_size:
            raise ValueError(
                f"train.shard_size {shard_size} must divide the {world} processes for hsdp; "
                f"use one of {[d for d in range(1, world + 1) if world % d == 0]}"
            )
        mesh = init_device_mesh(
            dist_info.device.type,
            (world // shard_size, shard_size),
            mesh_dim_names=("replicate", "shard"),
        )
    else:
        mesh = init_device_mesh(dist_info.device.type, (world,), mesh_dim_names=("shard",))
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return Parallel(model)


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside DDP and torch.compile wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model
