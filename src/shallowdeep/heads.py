"""The internal classifier (IC) of the SDN paper: mixed max/average pooling, then one linear layer."""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

POOLED_SIZE = 4


class InternalClassifier(nn.Module):
    """Reduces a (C, H, W) feature map to (C, 4, 4) by ``alpha * max + (1 - alpha) * avg`` pooling
    (no pooling when H and W are already 4 or smaller), flattens it and applies one linear layer.

    ``alpha`` is one learnable scalar, initialised uniformly in [0, 1) as in the paper's code.
    :meth:`pool` and :meth:`classify` split the forward pass so that the pooled maps of a frozen
    backbone can be cached and the IC trained on the cache.
    """

    def __init__(self, channels: int, height: int, width: int, num_classes: int) -> None:
        super().__init__()
        self.pools = height > POOLED_SIZE or width > POOLED_SIZE
        out_h, out_w = (min(height, POOLED_SIZE), min(width, POOLED_SIZE)) if self.pools else (height, width)
        self.alpha = nn.Parameter(torch.rand(1)) if self.pools else None
        self.linear = nn.Linear(channels * out_h * out_w, num_classes)
        self.out_size = (out_h, out_w)

    def pool(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The two pooled maps (max, avg), or (x, None) when the map is not pooled."""
        if not self.pools:
            return x, None
        h, w = x.shape[-2:]
        if h % self.out_size[0] == 0 and w % self.out_size[1] == 0:  # plain pooling is faster than adaptive
            k = (h // self.out_size[0], w // self.out_size[1])
            return F.max_pool2d(x, k), F.avg_pool2d(x, k)
        return F.adaptive_max_pool2d(x, self.out_size), F.adaptive_avg_pool2d(x, self.out_size)

    def classify(self, maxp: torch.Tensor, avgp: torch.Tensor | None) -> torch.Tensor:
        """Logits from the pooled maps returned by :meth:`pool`."""
        mixed = maxp if avgp is None else torch.lerp(avgp, maxp, self.alpha)  # alpha * max + (1 - alpha) * avg
        return self.linear(mixed.flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(*self.pool(x))
