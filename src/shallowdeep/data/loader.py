"""Batches for training and evaluation, straight from a uint8 tensor, with optional distributed sharding."""

from __future__ import annotations

import math
from typing import Iterator

import torch

from shallowdeep.data.augment import color_jitter, normalize, random_crop_flip
from shallowdeep.data.containers import DatasetSpec, ImageData
from shallowdeep.errors import UserError

JITTER_STRENGTH = 0.1  # "mild" colour jitter for data sets whose spec asks for it


def num_batches(n: int, batch_size: int, drop_last: bool = False, world_size: int = 1) -> int:
    """Batches each of ``world_size`` processes gets from ``n`` images (see :func:`batches`)."""
    per_rank = n // world_size if drop_last else math.ceil(n / world_size)
    return per_rank // batch_size if drop_last else math.ceil(per_rank / batch_size)


def padded(order: torch.Tensor, world_size: int, drop_last: bool) -> torch.Tensor:
    """``order`` cut or padded to a multiple of ``world_size``: ``drop_last`` drops the tail that does not
    divide evenly, otherwise the order wraps around to pad it (as ``DistributedSampler`` does)."""
    n = order.numel()
    total = n - n % world_size if drop_last else math.ceil(n / world_size) * world_size
    if total > n:
        order = order.repeat(math.ceil(total / n))
    return order[:total]


def batches(data: ImageData, spec: DatasetSpec, batch_size: int, *, train: bool, shuffle: bool,
            device: torch.device | str, generator: torch.Generator | None = None, drop_last: bool = False,
            rank: int = 0, world_size: int = 1,
            channels_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (normalised float32 images, int64 labels) batches on ``device`` for one epoch.

    ``train`` turns on the spec's augmentation (crop + flip, jitter where the spec asks). The whole uint8
    tensor moves to ``device`` once per call (not at all when it is already there: keep it there with
    ``data.to(device)`` to skip even that). The epoch's order is a permutation from ``generator`` when
    ``shuffle``; in a distributed run give every rank a generator seeded the same way (e.g. seed + epoch) so
    all ranks share the permutation, and each reads its own shard of it; all ranks get
    ``num_batches(len(data), batch_size, drop_last, world_size)`` batches. ``drop_last`` also drops the
    last partial batch. ``channels_last`` returns batches in that memory format.
    """
    if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
        raise UserError(f"need batch_size >= 1 and 0 <= rank < world_size, got {batch_size}, {rank}, {world_size}")
    return _epoch(data, spec, batch_size, train, shuffle, torch.device(device), generator, drop_last, rank,
                  world_size, channels_last)


def _epoch(data: ImageData, spec: DatasetSpec, batch_size: int, train: bool, shuffle: bool, device: torch.device,
           generator: torch.Generator | None, drop_last: bool, rank: int, world_size: int,
           channels_last: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    n = len(data)
    if n == 0:
        return
    images, labels = data.images.to(device), data.labels.to(device)
    mean = torch.tensor(spec.mean, dtype=torch.float32, device=device)
    std = torch.tensor(spec.std, dtype=torch.float32, device=device)
    if shuffle:
        order = torch.randperm(n, generator=generator, device=generator.device if generator is not None else "cpu")
    else:
        order = torch.arange(n)
    full = padded(order, world_size, drop_last).to(device)
    step = batch_size * world_size
    for i in range(num_batches(n, batch_size, drop_last, world_size)):
        # The global batch is augmented on every rank and each rank keeps its share, so the random draws and
        # therefore the training do not depend on the number of processes.
        index = full[i * step:(i + 1) * step]
        x = images[index]
        if train:
            x = random_crop_flip(x, spec.pad, generator, flip=spec.flip)
            if spec.jitter:
                x = color_jitter(x, JITTER_STRENGTH, generator)
        if world_size > 1:
            x, index = x[rank::world_size], index[rank::world_size]
        x = normalize(x, mean, std)
        yield (x.contiguous(memory_format=torch.channels_last) if channels_last else x), labels[index]
