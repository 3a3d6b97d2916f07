"""Image files without torch: finding them (:func:`image_files`) and decoding many into one uint8 array, several
files at a time (:func:`decode_images`). The torch-free runtime reads images through this module too."""

from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Sequence

import numpy as np
from PIL import Image, ImageFile
from tqdm import tqdm

from shallowdeep.errors import UserError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})

_CHUNK = 256  # images per task: PIL releases the GIL while decoding, the chunks amortise Python overhead
GREY_BANDS = frozenset({("1",), ("L",), ("I",), ("F",), ("L", "A"), ("L", "a")})  # PIL's bands of grey images
PIL_MODES = {1: "L", 3: "RGB"}  # the PIL mode images are converted to, by channel count
PNG_SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # samples per pixel of each PNG colour type
# the (x, y) of the first pixel and the steps (dx, dy) of each pass of Adam7 interlacing
ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


class TooManyPixels(UserError):
    """An image whose header declares more pixels than allowed (nothing of it was decoded)."""


@contextmanager
def _opened(path: Path | str, source: Path | BinaryIO | None = None) -> Iterator[Image.Image]:
    """The image at ``path`` (or in ``source``, named ``path``), opened lazily (only its header is read); a
    UserError naming it when unreadable."""
    try:
        with Image.open(path if source is None else source) as image:
            yield image
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise UserError(f"cannot decode image {path}: {err}") from None


@contextmanager
def _truncation_refused() -> Iterator[None]:
    """PIL's ``LOAD_TRUNCATED_IMAGES`` off while the block runs (code elsewhere may have turned it on for the whole
    process): a truncated file is refused, never read with its missing part black."""
    previous, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _header(path: Path) -> tuple[tuple[int, int], bool]:
    """An image's (width, height) and whether it is grey, from its header: nothing is decoded."""
    with _opened(path) as image:
        return image.size, image.getbands() in GREY_BANDS


def _eight_bit(image: Image.Image, path: Path) -> Image.Image:
    """``image`` with 16-bit grey levels (PIL modes ``I;16*`` and ``I``) scaled to 8 bits; other modes as they are.
    (PIL's own conversion would clip them, turning most of the image white.)"""
    if not image.mode.startswith("I"):
        return image
    grey = np.asarray(image).astype(np.int64)
    if grey.min() < 0 or grey.max() > 65535:
        raise UserError(f"image {path} has pixel values outside 0..65535; convert it to 8 or 16 bits per channel")
    return Image.fromarray(((grey * 255 + 32767) // 65535).astype(np.uint8), "L")


def _png_data_size(width: int, height: int, depth: int, colour: int, interlaced: bool) -> int:
    """The bytes a PNG's image data inflates to: each row of each (Adam7) pass, with its filter byte."""
    bits = depth * PNG_SAMPLES.get(colour, 4)

    def rows(w: int, h: int) -> int:
        return h * (1 + (w * bits + 7) // 8) if w > 0 and h > 0 else 0

    if not interlaced:
        return rows(width, height)
    return sum(rows((width - x + dx - 1) // dx, (height - y + dy - 1) // dy) for x, y, dx, dy in ADAM7)


def _check_png_data(path: Path | str, data: bytes) -> None:
    """A UserError naming ``path`` when its PNG image ``data`` inflates to fewer bytes than its header's size needs:
    PIL fills the missing rows with zeros, without complaint, when the compressed stream ends early."""
    pos, header, compressed = 8, None, []
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", data[pos + 8:pos + 21])
        elif kind == b"IDAT":
            compressed.append(data[pos + 8:pos + 8 + length])
        elif kind == b"IEND":
            break
        pos += 12 + length
    if header is None:
        return
    width, height, depth, colour, _, _, interlace = header
    expected, produced = _png_data_size(width, height, depth, colour, interlace == 1), 0
    inflater, stream = zlib.decompressobj(), b"".join(compressed)
    try:
        while stream and produced < expected:  # 4 MiB at a time, never the whole image at once
            produced += len(inflater.decompress(stream, 1 << 22))
            stream = inflater.unconsumed_tail
    except zlib.error:
        return  # damaged, not cut short: PIL's decoder says so
    if produced < expected:
        raise UserError(f"cannot decode image {path}: its data is truncated ({produced} of the {expected} bytes "
                        f"its {width}x{height} size needs)")


def _open_image(path: Path | str, size: tuple[int, int], channels: int, data: bytes | None = None,
                max_pixels: int | None = None) -> np.ndarray:
    """One image as uint8 (channels, H, W), converted as PIL converts to grey or RGB, resized (bilinear) to
    ``size`` = (W, H) unless it has that size; a truncated file is refused. The file is read from ``path``, or
    from ``data`` (its bytes, ``path`` naming it); with ``max_pixels`` a larger image is refused from its header,
    before anything is decoded."""
    with _opened(path, None if data is None else io.BytesIO(data)) as image:
        if max_pixels is not None and image.width * image.height > max_pixels:
            raise TooManyPixels(f"image {path} has {image.width}x{image.height} pixels, more than the {max_pixels} "
                                f"allowed")
        if image.format == "PNG":
            _check_png_data(path, Path(path).read_bytes() if data is None else data)
        image = _eight_bit(image, path).convert(PIL_MODES[channels])
        if image.size != size:
            image = image.resize(size, Image.Resampling.BILINEAR)
        pixels = np.asarray(image)
        return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)


def _headers(paths: Sequence[Path]) -> list[tuple[tuple[int, int], bool]]:
    """:func:`_header` of every image, read several at a time."""
    headers: list[tuple[tuple[int, int], bool]] = [((0, 0), False)] * len(paths)

    def read_headers(start: int) -> None:
        for i in range(start, min(start + _CHUNK, len(paths))):
            headers[i] = _header(paths[i])

    _in_chunks(len(paths), read_headers)
    return headers


def _common_size(paths: Sequence[Path], sizes: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The (width, height) every image in ``paths`` has (``sizes``, read from their headers), so that an image of
    another size is refused before anything is decoded or allocated."""
    (size, count), = Counter(sizes).most_common(1)  # ties: the size met first
    if count < len(paths):
        odd = next(i for i, s in enumerate(sizes) if s != size)
        raise UserError(f"image {paths[odd]} is {sizes[odd][0]}x{sizes[odd][1]} but {count} of the {len(paths)} "
                        f"images are {size[0]}x{size[1]}; all images must share one size (or resize them)")
    return size


def _own_channels(grey: Sequence[bool]) -> int:
    """1 when every image is grey, else 3, with a warning when some images are grey and others in colour."""
    greys = sum(grey)
    if greys == len(grey):
        return 1
    if greys:
        warnings.warn(f"{greys} of the {len(grey)} images are grey and the others in colour: all are read as RGB "
                      "(3 channels); to read them all as grey, train with --channels 1")
    return 3


def _in_chunks(n: int, task: Callable[[int], None]) -> None:
    """Run ``task(start)`` for each chunk of ``n`` items in a thread pool, with a progress bar."""
    workers = min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool, tqdm(total=n, unit="img", disable=None, leave=False) as bar:
        starts = range(0, n, _CHUNK)
        for start, _ in zip(starts, pool.map(task, starts)):
            bar.update(min(_CHUNK, n - start))


def decode_images(paths: Sequence[Path], image_size: int | None = None, channels: int | None = None) -> np.ndarray:
    """Decode ``paths`` into uint8 (N, C, H, W); 16-bit grey levels are scaled to 8 bits.

    ``channels`` 1 reads every image as grey, 3 as RGB (as PIL converts them); by default the images keep their
    own: 1 when all are grey, else 3 (with a warning when some are grey and others in colour). Without
    ``image_size`` every image must have the size most of them have (else UserError naming an image of another
    size, before any is decoded); with it, every image is resized (bilinear) to ``image_size`` x ``image_size``.
    A truncated file is a UserError naming it, even where PIL's ``LOAD_TRUNCATED_IMAGES`` is on.
    """
    if not paths:
        raise UserError("no images to decode")
    if channels not in (None, *PIL_MODES):
        raise UserError(f"images are read with 1 (grey) or 3 (RGB) channels, not {channels}")
    headers = _headers(paths) if image_size is None or channels is None else []
    size = (image_size, image_size) if image_size is not None else _common_size(paths, [s for s, _ in headers])
    channels = channels or _own_channels([grey for _, grey in headers])
    out = np.empty((len(paths), channels, size[1], size[0]), dtype=np.uint8)

    def decode_chunk(start: int) -> None:
        for i in range(start, min(start + _CHUNK, len(paths))):
            out[i] = _open_image(paths[i], size, channels)

    with _truncation_refused():
        _in_chunks(len(paths), decode_chunk)
    return out


def _images_under(folder: Path) -> list[Path]:
    """The image files under ``folder``, recursively, sorted by path (hidden files and folders left out); a folder
    that cannot be read is a one-line error saying why."""
    def unreadable(err: OSError) -> None:
        raise UserError(f"cannot read folder {err.filename}: {(err.strerror or str(err)).lower()}")

    found = []
    for top, folders, names in os.walk(folder, onerror=unreadable):
        folders[:] = [name for name in folders if not name.startswith(".")]
        found += [Path(top, name) for name in names if not name.startswith(".")
                  and os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES and Path(top, name).is_file()]
    return sorted(found)


def image_files(paths: str | Path | Sequence[str | Path]) -> list[Path]:
    """The image files ``paths`` (one path, or several) name, in order: a file as it is, a folder's image files
    (recursively, sorted by path, hidden files and folders left out); a one-line error for a path that does not
    exist or a folder without images."""
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else paths
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = _images_under(path)
            if not found:
                raise UserError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) under {path}")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise UserError(f"no file or folder {path}")
    return files


def decode_image_bytes(data: bytes, image_size: int, channels: int, name: str = "the image",
                       max_pixels: int | None = None) -> np.ndarray:
    """One image file's bytes ``data`` as uint8 (channels, image_size, image_size), read exactly as
    :func:`decode_images` reads files; a UserError naming ``name`` when it is not a readable image, is truncated,
    or has more than ``max_pixels`` pixels (judged from its header: a decompression bomb is never decoded)."""
    if channels not in PIL_MODES:
        raise UserError(f"images are read with 1 (grey) or 3 (RGB) channels, not {channels}")
    if not data:
        raise UserError(f"cannot decode image {name}: it is empty (0 bytes)")
    with _truncation_refused():
        return _open_image(name, (image_size, image_size), channels, data, max_pixels)
