"""Decoding image files into one uint8 array, several files at a time."""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from shallowdeep.errors import UserError

_CHUNK = 256  # images per task: PIL releases the GIL while decoding, the chunks amortise Python overhead


@contextmanager
def _opened(path: Path) -> Iterator[Image.Image]:
    """The image at ``path``, opened lazily (only its header is read); a UserError naming it when unreadable."""
    try:
        with Image.open(path) as image:
            yield image
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise UserError(f"cannot decode image {path}: {err}") from None


def _header_size(path: Path) -> tuple[int, int]:
    """An image's (width, height), from its header: nothing is decoded."""
    with _opened(path) as image:
        return image.size


def _eight_bit(image: Image.Image, path: Path) -> Image.Image:
    """``image`` with 16-bit grey levels (PIL modes ``I;16*`` and ``I``) scaled to 8 bits; other modes as they are.
    (PIL's own conversion would clip them, turning most of the image white.)"""
    if not image.mode.startswith("I"):
        return image
    grey = np.asarray(image).astype(np.int64)
    if grey.min() < 0 or grey.max() > 65535:
        raise UserError(f"image {path} has pixel values outside 0..65535; convert it to 8 or 16 bits per channel")
    return Image.fromarray(((grey * 255 + 32767) // 65535).astype(np.uint8), "L")


def _open_rgb(path: Path, size: tuple[int, int]) -> np.ndarray:
    """One image as uint8 (H, W, 3), resized (bilinear) to ``size`` = (W, H) unless it has that size."""
    with _opened(path) as image:
        image = _eight_bit(image, path).convert("RGB")
        if image.size != size:
            image = image.resize(size, Image.Resampling.BILINEAR)
        return np.asarray(image)


def _common_size(paths: Sequence[Path]) -> tuple[int, int]:
    """The (width, height) of every image in ``paths``, read from their headers, so that an image of another
    size is refused before anything is decoded or allocated."""
    sizes: list[tuple[int, int]] = [(0, 0)] * len(paths)

    def read_headers(start: int) -> None:
        for i in range(start, min(start + _CHUNK, len(paths))):
            sizes[i] = _header_size(paths[i])

    _in_chunks(len(paths), read_headers)
    (size, count), = Counter(sizes).most_common(1)  # ties: the size met first
    if count < len(paths):
        odd = next(i for i, s in enumerate(sizes) if s != size)
        raise UserError(f"image {paths[odd]} is {sizes[odd][0]}x{sizes[odd][1]} but {count} of the {len(paths)} "
                        f"images are {size[0]}x{size[1]}; all images must share one size (or resize them)")
    return size


def _in_chunks(n: int, task: Callable[[int], None]) -> None:
    """Run ``task(start)`` for each chunk of ``n`` items in a thread pool, with a progress bar."""
    workers = min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool, tqdm(total=n, unit="img", disable=None, leave=False) as bar:
        starts = range(0, n, _CHUNK)
        for start, _ in zip(starts, pool.map(task, starts)):
            bar.update(min(_CHUNK, n - start))


def decode_images(paths: Sequence[Path], image_size: int | None = None) -> np.ndarray:
    """Decode ``paths`` into uint8 (N, 3, H, W), RGB; 16-bit grey levels are scaled to 8 bits.

    Without ``image_size`` every image must have the size most of them have (else UserError naming an image of
    another size, before any is decoded); with it, every image is resized (bilinear) to ``image_size`` x
    ``image_size``.
    """
    if not paths:
        raise UserError("no images to decode")
    size = (image_size, image_size) if image_size is not None else _common_size(paths)
    out = np.empty((len(paths), 3, size[1], size[0]), dtype=np.uint8)

    def decode_chunk(start: int) -> None:
        for i in range(start, min(start + _CHUNK, len(paths))):
            out[i] = _open_rgb(paths[i], size).transpose(2, 0, 1)

    _in_chunks(len(paths), decode_chunk)
    return out
