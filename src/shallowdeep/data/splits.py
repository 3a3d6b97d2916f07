"""Carving a holdout split from the training set, and per-channel statistics of a split."""

from __future__ import annotations

import torch

from shallowdeep.data.containers import ImageData
from shallowdeep.errors import UserError

_STATS_CHUNK = 4096


def carve_holdout(train: ImageData, fraction: float, seed: int) -> tuple[ImageData, ImageData]:
    """Split ``train`` into (train, holdout) by a permutation seeded with ``seed``.

    The holdout is the first ``round(fraction * N)`` images of the permutation (kept in source order); the
    training part keeps the permutation order, so its first images are a class-mixed random subset.
    """
    if not 0.0 <= fraction < 1.0:
        raise UserError(f"holdout_fraction must be in [0, 1), got {fraction}")
    n = len(train)
    n_holdout = round(fraction * n)
    if n_holdout >= n:
        raise UserError(f"holdout_fraction {fraction} leaves no training images out of {n}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    holdout_index, _ = order[:n_holdout].sort()
    return train.subset(order[n_holdout:]), train.subset(holdout_index)


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Per-channel mean and standard deviation of uint8 (N, 3, H, W) images scaled to [0, 1]."""
    total = torch.zeros(3, dtype=torch.float64)
    squares = torch.zeros(3, dtype=torch.float64)
    for start in range(0, images.shape[0], _STATS_CHUNK):
        chunk = images[start:start + _STATS_CHUNK].to(torch.float64).div_(255)
        total += chunk.sum(dim=(0, 2, 3))
        squares += chunk.square().sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())
