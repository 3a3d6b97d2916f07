"""The pixels and batch size a user hands to ``predict``, checked once for both engines (PyTorch's
:class:`~shallowdeep.Classifier` and the torch-free runtime): a batch ``(N, C, H, W)`` or one ``(C, H, W)`` image,
as an array, a tensor or a list of them; uint8, integers within 0..255 (taken as uint8) or floats in [0, 1].
Anything else gets a one-line error that names the fix. numpy only."""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from .errors import UserError, first_line


def _array(images: Any) -> np.ndarray:
    """``images`` as a numpy array; a tensor (on any device) is copied to the host."""
    if hasattr(images, "detach"):
        images = images.detach().cpu().numpy()
    if isinstance(images, (list, tuple)) and images and hasattr(images[0], "detach"):
        images = [i.detach().cpu().numpy() for i in images]
    return np.asarray(images)


def _is_path(x: Any) -> bool:
    return isinstance(x, (str, bytes, os.PathLike))


def checked_pixels(images: Any, input_shape: Sequence[int], taker: str = "this network") -> np.ndarray:
    """``images`` as ``(N, C, H, W)`` pixels matching ``input_shape`` (C, H, W): uint8, or float32 in [0, 1].
    ``taker`` names what takes them in the errors ("this network", "this export")."""
    shape = tuple(input_shape)
    if _is_path(images) or (isinstance(images, (list, tuple)) and images and _is_path(images[0])):
        raise UserError("predict takes pixels; to classify image files call predict_files(paths)")
    try:
        x = _array(images)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise UserError(f"images must be one array of pixels, (N, C, H, W) or (C, H, W): {first_line(exc)}") \
            from None
    if x.dtype == object:
        raise UserError("images must be one array of pixels, (N, C, H, W) or (C, H, W), all of one size")
    x = x[None] if x.ndim == len(shape) else x
    if x.ndim != len(shape) + 1 or tuple(x.shape[1:]) != shape:
        given = tuple(x.shape[1:]) if x.ndim == len(shape) + 1 else tuple(x.shape)
        hint = ("; an (N, H, W, C) array goes in as array.transpose(0, 3, 1, 2)"
                if x.ndim == 4 and tuple(x.shape[1:]) == (*shape[1:], shape[0]) else "")
        raise UserError(f"images of shape {given} given, but {taker} takes {shape} (channels, height, width), "
                        f"one image or a batch (N, C, H, W){hint}")
    if x.dtype == np.uint8 or x.size == 0:
        return x
    if np.issubdtype(x.dtype, np.floating):
        if not np.isfinite(x).all():
            raise UserError("images hold NaN or infinite pixel values; give uint8 pixels or floats in [0, 1]")
        lo, hi = x.min(), x.max()
        if lo < 0 or hi > 1:
            raise UserError(f"float images must be in [0, 1], these go from {lo:g} to {hi:g}; divide pixel values "
                            "of 0..255 by 255 (or give them as uint8)")
        return x.astype(np.float32, copy=False)
    if not np.issubdtype(x.dtype, np.integer):
        raise UserError(f"images of type {x.dtype}; give uint8 pixels or floats in [0, 1]")
    lo, hi = int(x.min()), int(x.max())
    if lo < 0 or hi > 255:
        raise UserError(f"integer images must hold pixel values 0..255, these go from {lo} to {hi}; scale them to "
                        "0..255 (16-bit images: // 257) or to floats in [0, 1]")
    return x.astype(np.uint8)


def check_batch_size(batch_size: Any) -> None:
    """A one-line error unless ``batch_size`` is a whole number of at least 1."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise UserError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
