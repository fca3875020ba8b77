"""Data-parallel training under ``torchrun``: process group, sampler, wrapping, rank-0 writes.

Without ``torchrun`` (WORLD_SIZE unset or 1) every function is a no-op and training is single-process.
"""

from __future__ import annotations

import logging
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, DistributedSampler

logger = logging.getLogger(__name__)


def enabled() -> bool:
    """True when launched by torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_main() -> bool:
    """True on rank 0 (or when not distributed): the process that writes files and logs progress."""
    return not dist.is_initialized() or dist.get_rank() == 0


def setup(device: torch.device) -> torch.device:
    """Joins the process group (NCCL on CUDA, gloo on CPU); returns this rank's device."""
    if not enabled() or dist.is_initialized():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    logger.info("rank %d of %d on %s", dist.get_rank(), dist.get_world_size(), device)
    return device


def wrap(module: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel over the parameters that train now (call again after unfreezing)."""
    if not dist.is_initialized() or not any(p.requires_grad for p in module.parameters()):
        return module
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)


def sampler(dataset: Dataset, *, shuffle: bool, seed: int) -> DistributedSampler | None:
    """A shard of ``dataset`` per rank, reshuffled per epoch with ``set_epoch``."""
    if not dist.is_initialized():
        return None
    return DistributedSampler(dataset, shuffle=shuffle, seed=seed % 2**31)


def shard(order: torch.Tensor) -> torch.Tensor:
    """This rank's share of an epoch's sample order (every world_size-th index, as DistributedSampler)."""
    if not dist.is_initialized():
        return order
    world = dist.get_world_size()
    padded = torch.cat([order, order[: (-len(order)) % world]])  # equal shares, as DistributedSampler pads
    return padded[dist.get_rank()::world]


def shard_size(n: int) -> int:
    """Samples of ``n`` that :func:`shard` (and DistributedSampler) give this rank."""
    return -(-n // dist.get_world_size()) if dist.is_initialized() else n


def rank_parts() -> tuple[int, ...]:
    """What to mix into a seed so each rank draws its own random numbers (dropout, flips, mixup):
    ``(rank,)`` under torchrun, ``()`` in one process (so a plain run keeps its seeds)."""
    return (dist.get_rank(),) if dist.is_initialized() else ()


def all_sum(values: list[float]) -> list[float]:
    """``values`` summed over every rank (float64); unchanged in one process."""
    if not dist.is_initialized():
        return values
    on = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    tensor = torch.tensor(values, dtype=torch.float64, device=on)  # NCCL reduces on this rank's GPU only
    dist.all_reduce(tensor)
    return tensor.tolist()


def barrier() -> None:
    """Waits for every rank (e.g. until rank 0 has written a checkpoint)."""
    if dist.is_initialized():
        dist.barrier()


def teardown() -> None:
    """Leaves the process group."""
    if dist.is_initialized():
        dist.destroy_process_group()
