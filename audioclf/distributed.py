"""torchrun / DistributedDataParallel plumbing (torchvision references style).

``torchrun --nproc_per_node=N train.py ...`` sets RANK, WORLD_SIZE and LOCAL_RANK; plain
``python train.py`` runs as a single process with the same code path.
"""
from __future__ import annotations

import logging
from typing import Iterator

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from audioclf.runtime import DistInfo

__all__ = ["DistInfo", "init_distributed", "cleanup_distributed", "all_reduce_sum", "barrier", "broadcast_object",
           "ShardSampler", "sync_buffers"]

log = logging.getLogger(__name__)


def init_distributed(info: DistInfo, device: torch.device) -> None:
    """Join the process group when launched by torchrun with several processes (nccl on CUDA, gloo on CPU).

    ``device`` comes from ``resolve_device(name, info)``, which has already refused a GPU count
    that does not fit, so no process starts work it cannot finish.
    """
    if not info.enabled:
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend)
    log.info("distributed: rank %d of %d (%s)", info.rank, info.world_size, backend)


def cleanup_distributed(info: DistInfo) -> None:
    """Leave the process group if we joined one."""
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum ``values`` over all processes (identity when single-process)."""
    if info.enabled:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def barrier(info: DistInfo) -> None:
    """Wait for every process (no-op when single-process)."""
    if info.enabled:
        dist.barrier()


def broadcast_object(obj, info: DistInfo):
    """Rank 0's ``obj`` on every process."""
    if not info.enabled:
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world, ...``: disjoint shards with no padded duplicates.

    Used for validation so that summed metrics equal a single-process pass exactly.
    """

    def __init__(self, n_items: int, info: DistInfo):
        self.indices = list(range(info.rank, n_items, info.world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def sync_buffers(model: torch.nn.Module, info: DistInfo) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every process.

    Each rank updates its running statistics on its own last batch; validation and the saved
    checkpoint must all use rank 0's.
    """
    if info.enabled:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)
