"""Decoding image files into one uint8 array, several files at a time."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from shallowdeep.errors import UserError

_CHUNK = 256  # images per task: PIL releases the GIL while decoding, the chunks amortise Python overhead


def _open_rgb(path: Path, size: tuple[int, int] | None) -> np.ndarray:
    """One image as uint8 (H, W, 3); resized (bilinear) to ``size`` = (W, H) when given."""
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            if size is not None and image.size != size:
                image = image.resize(size, Image.Resampling.BILINEAR)
            return np.asarray(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise UserError(f"cannot decode image {path}: {err}") from None


def decode_images(paths: Sequence[Path], image_size: int | None = None) -> np.ndarray:
    """Decode ``paths`` into uint8 (N, 3, H, W), RGB.

    Without ``image_size`` every image must have the size of the first one (else UserError naming the file);
    with it, every image is resized (bilinear) to ``image_size`` x ``image_size``.
    """
    if not paths:
        raise UserError("no images to decode")
    size = (image_size, image_size) if image_size is not None else None
    first = _open_rgb(paths[0], size)
    out = np.empty((len(paths), 3, *first.shape[:2]), dtype=np.uint8)

    def decode_chunk(start: int) -> int:
        for i in range(start, min(start + _CHUNK, len(paths))):
            array = first if i == 0 else _open_rgb(paths[i], size)
            if array.shape != first.shape:
                raise UserError(f"image {paths[i]} is {array.shape[1]}x{array.shape[0]} but {paths[0]} is "
                                f"{first.shape[1]}x{first.shape[0]}; all images must share one size (or resize them)")
            out[i] = array.transpose(2, 0, 1)
        return min(_CHUNK, len(paths) - start)

    workers = min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool, tqdm(total=len(paths), unit="img", disable=None, leave=False) as bar:
        for done in pool.map(decode_chunk, range(0, len(paths), _CHUNK)):
            bar.update(done)
    return out
