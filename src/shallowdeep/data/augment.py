"""Batched augmentation and normalisation: tensor ops on the batch's own device, no per-image Python.

Random draws come from ``generator`` (on its own device, then moved), so a seeded generator reproduces a run.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

LUMA = (0.299, 0.587, 0.114)  # ITU-R 601 grey, as PIL and torchvision use


def _draw(generator: torch.Generator | None, device: torch.device, fn, *args, **kwargs) -> torch.Tensor:
    source = generator.device if generator is not None else device
    return fn(*args, generator=generator, device=source, **kwargs).to(device)


def crop_flip(x: torch.Tensor, pad: int, top: torch.Tensor, left: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Crop image ``i`` of ``x`` (N, C, H, W) at (``top[i]``, ``left[i]``) of its ``pad``-zero-padded copy,
    mirrored left-right where ``flip[i]``. Offsets lie in [0, 2 * pad]."""
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad)) if pad else x
    columns = torch.arange(w, device=x.device).expand(n, w)
    columns = torch.where(flip[:, None], w - 1 - columns, columns) + left[:, None]
    rows = top[:, None] + torch.arange(h, device=x.device)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    channel = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, channel, rows[:, None, :, None], columns[:, None, None, :]]


def random_crop_flip(x: torch.Tensor, pad: int, generator: torch.Generator | None = None,
                     flip: bool = True) -> torch.Tensor:
    """Random crop with zero padding ``pad`` and (when ``flip``) random horizontal flip, per sample.

    Draws, in order, each (N,) on the generator's device: top offsets and left offsets (only when ``pad``),
    then flip coins (only when ``flip``).
    """
    n = x.shape[0]
    if pad == 0 and not flip:
        return x
    zeros = torch.zeros(n, dtype=torch.long, device=x.device)
    top = _draw(generator, x.device, torch.randint, 0, 2 * pad + 1, (n,)) if pad else zeros
    left = _draw(generator, x.device, torch.randint, 0, 2 * pad + 1, (n,)) if pad else zeros
    mirror = _draw(generator, x.device, torch.randint, 0, 2, (n,)) if flip else zeros
    return crop_flip(x, pad, top, left, mirror.bool())


def to_unit_float(x: torch.Tensor) -> torch.Tensor:
    """A new float32 tensor in [0, 1]: uint8 images divided by 255, floating images copied as they are."""
    return x.float().div_(255) if x.dtype == torch.uint8 else x.to(torch.float32, copy=True)


def _grey(x: torch.Tensor) -> torch.Tensor:
    """The grey level of each pixel of RGB images; grey images are their own."""
    if x.shape[1] == 1:
        return x
    weights = torch.tensor(LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * weights).sum(dim=1, keepdim=True)


def adjust_colors(x: torch.Tensor, brightness: torch.Tensor, contrast: torch.Tensor,
                  saturation: torch.Tensor) -> torch.Tensor:
    """Scale brightness, then contrast (about the image's mean grey), then saturation (about each pixel's grey)
    of float images in [0, 1] by per-sample factors, clamping to [0, 1] after each step (saturation changes
    nothing in grey images)."""
    brightness, contrast, saturation = (f.view(-1, 1, 1, 1) for f in (brightness, contrast, saturation))
    x = (x * brightness).clamp_(0, 1)
    mean = _grey(x).mean(dim=(2, 3), keepdim=True)
    x = ((x - mean) * contrast + mean).clamp_(0, 1)
    grey = _grey(x)
    return ((x - grey) * saturation + grey).clamp_(0, 1)


def color_jitter(x: torch.Tensor, strength: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-sample brightness, contrast and saturation factors uniform in [1 - strength, 1 + strength].

    Takes uint8 or [0, 1] float images, returns float32 in [0, 1]. Draws one (3, N) uniform tensor.
    """
    factors = 1 + strength * (2 * _draw(generator, x.device, torch.rand, (3, x.shape[0])) - 1)
    return adjust_colors(to_unit_float(x), *factors)


def normalize(x: torch.Tensor, mean: Sequence[float] | torch.Tensor,
              std: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """``(x / 255 - mean) / std`` per channel for uint8 ``x`` (float ``x`` is taken as already in [0, 1])."""
    mean = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return to_unit_float(x).sub_(mean).div_(std)
