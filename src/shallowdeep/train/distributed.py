"""Distributed data-parallel training through ``torchrun``: each process trains on its shard."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
from torch import nn


@dataclass
class DistInfo:
    """This process's place in a distributed run (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, net: nn.Module, device: torch.device) -> nn.Module:
        """``net`` wrapped in DistributedDataParallel when there is more than one process."""
        if self.world_size == 1:
            return net
        if device.type == "cuda":  # batch statistics over the global batch, as on one GPU
            nn.SyncBatchNorm.convert_sync_batchnorm(net)
            return nn.parallel.DistributedDataParallel(net, device_ids=[device.index])
        return nn.parallel.DistributedDataParallel(net)


def init_from_env() -> DistInfo:
    """Join the process group ``torchrun`` describes in the environment (NCCL on CUDA, else gloo).

    On CPU (gloo) batch norm keeps per-process statistics, so only runs whose batch norm is frozen
    (IC-only) match a one-process run exactly; on CUDA batch norm is synchronised.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DistInfo()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if not torch_dist.is_initialized():
        torch_dist.init_process_group(backend)
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    return DistInfo(torch_dist.get_rank(), world_size, local_rank)
