"""Any image folder laid out as ``ROOT/{train,test}/<class>/<image>``."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch

from shallowdeep.data.containers import ImageData, RawDataset
from shallowdeep.errors import UserError
from shallowdeep.images import IMAGE_SUFFIXES, decode_images

_LAYOUT = "expected ROOT/train/<class>/<image> and ROOT/test/<class>/<image>"


def _class_dirs(split_dir: Path) -> list[Path]:
    if not split_dir.is_dir():
        raise UserError(f"missing folder {split_dir}; {_LAYOUT}")
    return sorted((d for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith(".")), key=lambda d: d.name)


def _class_name(folder: Path) -> str:
    """A class folder's name as text that can be printed and saved: bytes that are not UTF-8 are written as
    escapes (a name holding the byte 0xff reads ``\\xff``)."""
    return os.fsencode(folder.name).decode("utf-8", "backslashreplace")


def _is_file(entry: os.DirEntry) -> bool:
    """Whether ``entry`` is a file (links followed); a broken or looping link is skipped with a warning."""
    try:
        if entry.is_file():
            return True
    except OSError:  # a link to itself, or a longer loop of links
        pass
    if entry.is_symlink() and not os.path.exists(entry.path):
        warnings.warn(f"skipping {entry.path}: a broken or looping symbolic link")
    return False


def _images_in(folder: Path, max_per_class: int | None) -> list[Path]:
    with os.scandir(folder) as entries:
        names = sorted(e.name for e in entries if os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES
                       and not e.name.startswith(".") and _is_file(e))
    return [folder / name for name in names[:max_per_class]]


def _listing(root: Path, max_per_class: int | None) -> tuple[list[str], dict[str, list[tuple[Path, int]]]]:
    """Class names (sorted train folders) and, per split, (file, label) pairs in class then name order."""
    classes = [_class_name(d) for d in _class_dirs(root / "train")]
    index = {name: i for i, name in enumerate(classes)}
    if len(index) < len(classes):
        raise UserError(f"two class folders under {root / 'train'} have names that read the same; rename one")
    listing = {}
    for split in ("train", "test"):
        pairs = []
        for class_dir in _class_dirs(root / split):
            label = index.get(_class_name(class_dir))
            if label is None:
                raise UserError(f"class folder {class_dir} has no counterpart in {root / 'train'}")
            pairs += [(p, label) for p in _images_in(class_dir, max_per_class)]
        if not pairs:
            raise UserError(f"no images under {root / split}; {_LAYOUT}")
        listing[split] = pairs
    return classes, listing


def imagefolder_files(root: str | Path, max_per_class: int | None = None) -> list[Path]:
    """Every image file :func:`read_imagefolder` would decode."""
    _, listing = _listing(Path(root).expanduser(), max_per_class)
    return [p for pairs in listing.values() for p, _ in pairs]


def read_imagefolder(root: str | Path, image_size: int | None = None, max_per_class: int | None = None,
                     channels: int | None = None) -> RawDataset:
    """Decode ``ROOT/{train,test}/<class>/<image>``; classes are the sorted train folder names.

    Grey images stay grey (1 channel) and colour images are read as RGB; a folder of both is read as RGB,
    with a warning, unless ``channels`` (1 or 3) says how to read every image. Images must all share one
    square size unless ``image_size`` is given, in which case each is resized (bilinear) to ``image_size`` x
    ``image_size``. ``max_per_class`` keeps the first images (by file name) of each class folder, for quick runs.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "does not exist"
        raise UserError(f"image folder {root} {what}; {_LAYOUT}")
    classes, listing = _listing(root, max_per_class)
    pairs = listing["train"] + listing["test"]
    images = torch.from_numpy(decode_images([p for p, _ in pairs], image_size, channels))
    labels = torch.from_numpy(np.array([label for _, label in pairs], dtype=np.int64))
    height, width = images.shape[2:]
    if height != width:
        raise UserError(f"images under {root} are {width}x{height}, not square; pass image_size to resize them")
    n_train = len(listing["train"])
    return RawDataset(ImageData(images[:n_train], labels[:n_train]), ImageData(images[n_train:], labels[n_train:]),
                      classes)
