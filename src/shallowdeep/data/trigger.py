"""BadNets triggers: a small pattern stamped onto uint8 images at a fixed place.

The paper's trigger is a white 5x5 square in the bottom-right corner of a 32x32 image; for other
image sizes the default side is scaled in proportion (5/32 of the image side, at least 1 pixel).
A pattern is ``square`` (white), ``checkerboard`` (white and black pixels, white at the patch's
top-left corner) or an image file (read with Pillow as RGB, or grey for grey images, and resized to
the side, nearest neighbour). The place is a corner or ``center``, or ``ROW,COL``: the image pixel where the patch's
top-left corner goes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..choices import PLACES
from ..errors import UserError

PATTERNS = ("square", "checkerboard")
PAPER_SIDE, PAPER_IMAGE = 5, 32


@dataclass(frozen=True)
class TriggerSpec:
    """How a trigger looks and where it goes, as plain values (recorded in a run's config)."""

    pattern: str = "square"  # square, checkerboard, or the path of an image file
    size: int | None = None  # side in pixels; None: 5/32 of the image side
    position: str = "bottom-right"  # a corner, center, or "ROW,COL" of the patch's top-left pixel

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TriggerSpec:
        return cls(pattern=d["pattern"], size=d.get("size"), position=d.get("position", "bottom-right"))

    @property
    def is_file(self) -> bool:
        """Whether the pattern is an image file rather than a built-in pattern."""
        return self.pattern not in PATTERNS


@dataclass(frozen=True)
class Trigger:
    """A concrete trigger: the uint8 patch (channels, side, side) and the pixel where its top-left corner goes."""

    patch: torch.Tensor
    top: int
    left: int

    @property
    def side(self) -> int:
        return self.patch.shape[-1]


def default_side(image_size: int) -> int:
    """The paper's 5-pixel side on 32x32 images, scaled to ``image_size`` (rounded half up, at least 1)."""
    return max(1, int(PAPER_SIDE * image_size / PAPER_IMAGE + 0.5))


def build_trigger(spec: TriggerSpec, image_size: int, base_dir: str | Path = ".", channels: int = 3) -> Trigger:
    """The trigger ``spec`` describes for square images of side ``image_size`` with ``channels`` channels (1:
    grey, 3: RGB; a relative pattern file is read from ``base_dir``)."""
    side = default_side(image_size) if spec.size is None else spec.size
    if not 1 <= side <= image_size:
        raise UserError(f"trigger size {side} must lie between 1 and the image side {image_size}")
    top, left = place(spec.position, side, image_size)
    return Trigger(make_patch(spec.pattern, side, base_dir, channels), top, left)


def make_patch(pattern: str, side: int, base_dir: str | Path = ".", channels: int = 3) -> torch.Tensor:
    """The uint8 (channels, side, side) patch of ``pattern`` (``channels`` 1 or 3)."""
    if pattern == "square":
        return torch.full((channels, side, side), 255, dtype=torch.uint8)
    if pattern == "checkerboard":
        rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
        white = ((rows + cols) % 2 == 0).to(torch.uint8) * 255
        return white.expand(channels, side, side).clone()
    return _image_patch(Path(base_dir, pattern), side, channels)


def _image_patch(path: Path, side: int, channels: int) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError

    from ..images import PIL_MODES

    if not path.is_file():
        raise UserError(f"trigger pattern {path} is neither {' nor '.join(PATTERNS)} nor an image file")
    try:
        with Image.open(path) as image:
            picture = image.convert(PIL_MODES[channels])
    except (UnidentifiedImageError, OSError) as exc:
        raise UserError(f"trigger pattern {path} is not an image Pillow can read") from exc
    if picture.size != (side, side):
        picture = picture.resize((side, side), Image.NEAREST)
    pixels = np.asarray(picture, dtype=np.uint8)
    return torch.from_numpy((pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)).copy())


def place(position: str, side: int, image_size: int) -> tuple[int, int]:
    """(top, left) pixel of a ``side``-pixel patch at ``position`` in an ``image_size`` square image."""
    far = image_size - side
    named = {"bottom-right": (far, far), "bottom-left": (far, 0), "top-right": (0, far), "top-left": (0, 0),
             "center": (far // 2, far // 2)}
    if position in named:
        return named[position]
    try:
        top, left = (int(v) for v in position.split(","))
    except ValueError:
        raise UserError(f"trigger position '{position}' must be one of {', '.join(PLACES)} or ROW,COL") from None
    if not (0 <= top <= far and 0 <= left <= far):
        raise UserError(f"a {side}-pixel trigger at {top},{left} does not fit in {image_size}x{image_size} images; "
                        f"rows and columns must lie in 0..{far}")
    return top, left


def stamp(images: torch.Tensor, trigger: Trigger) -> torch.Tensor:
    """A copy of uint8 ``images`` (N, C, H, W) with the trigger's patch (C channels) pasted in; ``images`` is
    unchanged."""
    channels = trigger.patch.shape[0]
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != channels:
        raise UserError(f"this trigger is stamped on uint8 (N, {channels}, H, W) images, got {images.dtype} "
                        f"{tuple(images.shape)}")
    if trigger.top + trigger.side > images.shape[2] or trigger.left + trigger.side > images.shape[3]:
        raise UserError(f"the trigger does not fit in {images.shape[2]}x{images.shape[3]} images")
    out = images.clone()
    out[:, :, trigger.top:trigger.top + trigger.side, trigger.left:trigger.left + trigger.side] = \
        trigger.patch.to(images.device)
    return out
