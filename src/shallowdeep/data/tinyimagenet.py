"""Tiny ImageNet in the official ``tiny-imagenet-200`` layout; its labelled val set is our test split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from shallowdeep.data.containers import ImageData, RawDataset
from shallowdeep.images import decode_images
from shallowdeep.errors import UserError

FOLDER = "tiny-imagenet-200"
_LAYOUT = "expected wnids.txt, words.txt, train/<wnid>/images/*.JPEG and val/images with val/val_annotations.txt"


def locate_tinyimagenet(root: str | Path) -> Path:
    """The folder holding ``wnids.txt``: ``root`` itself or ``root/tiny-imagenet-200``."""
    root = Path(root).expanduser()
    for folder in (root, root / FOLDER):
        if (folder / "wnids.txt").is_file():
            return folder
    raise UserError(f"no Tiny ImageNet under {root}: download http://cs231n.stanford.edu/tiny-imagenet-200.zip and "
                    f"unzip it so that {root / FOLDER}/ exists ({_LAYOUT})")


def _read_lines(path: Path) -> list[str]:
    try:
        return [line for line in path.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        raise UserError(f"missing file {path}; {_LAYOUT}") from None


def _wnids(folder: Path) -> list[str]:
    wnids = [line.strip() for line in _read_lines(folder / "wnids.txt")]
    if len(set(wnids)) != len(wnids):
        raise UserError(f"{folder / 'wnids.txt'} lists a class twice")
    return wnids


def _class_names(folder: Path, wnids: list[str]) -> list[str]:
    """The first synonym in words.txt of each class (the wnid itself where words.txt lacks it)."""
    words = dict(line.split("\t", 1) for line in _read_lines(folder / "words.txt") if "\t" in line)
    return [words.get(wnid, wnid).split(",")[0].strip() for wnid in wnids]


def _listing(folder: Path, wnids: list[str], max_per_class: int | None) -> dict[str, list[tuple[Path, int]]]:
    """(file, label) pairs of train (class folders in wnids order) and val (val_annotations.txt order)."""
    train = []
    for label, wnid in enumerate(wnids):
        images_dir = folder / "train" / wnid / "images"
        if not images_dir.is_dir():
            raise UserError(f"missing folder {images_dir}; {_LAYOUT}")
        files = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in (".jpeg", ".jpg"))
        train += [(p, label) for p in files[:max_per_class]]
    index = {wnid: i for i, wnid in enumerate(wnids)}
    val, per_class = [], [0] * len(wnids)
    annotations = folder / "val" / "val_annotations.txt"
    for number, line in enumerate(_read_lines(annotations), 1):
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in index:
            raise UserError(f"{annotations} line {number} does not name an image and a class of wnids.txt")
        label = index[fields[1]]
        if max_per_class is None or per_class[label] < max_per_class:
            per_class[label] += 1
            val.append((folder / "val" / "images" / fields[0], label))
    if not train or not val:
        raise UserError(f"no {'training' if not train else 'validation'} images in {folder}; {_LAYOUT}")
    return {"train": train, "test": val}


def tinyimagenet_files(folder: Path, max_per_class: int | None = None) -> list[Path]:
    """Every file :func:`read_tinyimagenet` reads from ``folder`` (see :func:`locate_tinyimagenet`)."""
    listing = _listing(folder, _wnids(folder), max_per_class)
    meta = [folder / "wnids.txt", folder / "words.txt", folder / "val" / "val_annotations.txt"]
    return meta + [p for pairs in listing.values() for p, _ in pairs]


def read_tinyimagenet(root: str | Path, max_per_class: int | None = None) -> RawDataset:
    """Decode Tiny ImageNet: classes in wnids.txt order, named from words.txt; test = the official val set.

    ``max_per_class`` keeps the first images of each class in both splits, for quick runs.
    """
    folder = locate_tinyimagenet(root)
    wnids = _wnids(folder)
    classes = _class_names(folder, wnids)
    splits = {}
    for split, pairs in _listing(folder, wnids, max_per_class).items():
        images = decode_images([p for p, _ in pairs], channels=3)  # a few are grey
        if images.shape[2:] != (64, 64):
            raise UserError(f"Tiny ImageNet images in {folder} are {images.shape[3]}x{images.shape[2]}, not 64x64")
        splits[split] = ImageData(torch.from_numpy(images),
                                  torch.from_numpy(np.array([label for _, label in pairs], dtype=np.int64)))
    return RawDataset(splits["train"], splits["test"], classes)
