"""Carving a holdout split from the training set, and per-channel statistics of a split."""

from __future__ import annotations

import torch

from shallowdeep.data.containers import ImageData
from shallowdeep.errors import UserError


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


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of uint8 (N, C, H, W) images scaled to [0, 1].

    Computed exactly from each channel's 256-bin histogram (fast, no float copy of the images).
    """
    counts = torch.stack([torch.bincount(images[:, c].flatten(), minlength=256)
                          for c in range(images.shape[1])]).double()
    values = torch.arange(256, dtype=torch.float64) / 255
    total = counts.sum(dim=1)
    mean = (counts * values).sum(dim=1) / total
    std = ((counts * values.square()).sum(dim=1) / total - mean.square()).clamp_min(0).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())
