"""``load_dataset``: any supported data set, decoded once (cached), split into train / holdout / test."""

from __future__ import annotations

import warnings
from functools import partial
from pathlib import Path

import torch

from shallowdeep.choices import DATASETS, NORMALIZATIONS
from shallowdeep.data.augment import LUMA
from shallowdeep.data.cache import cached, default_cache_dir
from shallowdeep.data.cifar import (CIFAR10_CLASSES, cifar_files, download_cifar, find_cifar, locate_cifar, read_cifar10,
                                   read_cifar100)
from shallowdeep.data.containers import DatasetSpec, RawDataset, Splits
from shallowdeep.data.digits import read_digits
from shallowdeep.data.imagefolder import imagefolder_files, read_imagefolder
from shallowdeep.data.splits import carve_holdout, channel_stats
from shallowdeep.data.tinyimagenet import locate_tinyimagenet, read_tinyimagenet, tinyimagenet_files
from shallowdeep.errors import UserError


CHANNEL_NAMES = {1: ("grey",), 3: ("red", "green", "blue")}
MIN_STD = 1 / 255  # the smallest standard deviation a channel is divided by: one grey level
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # channel mean and std of ImageNet
# Normalisation of the paper: ImageNet statistics for CIFAR-10, each data set's own for the others.
PAPER_STATS = {
    "cifar10": IMAGENET_STATS,
    "cifar100": ((0.507, 0.4865, 0.441), (0.267, 0.256, 0.276)),
    "tinyimagenet": ((0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262)),
}


def _decode(name: str, data_dir: str | Path | None, download: bool, cache_dir: str | Path | None,
            image_size: int | None, channels: int | None, coarse_labels: bool) -> RawDataset:
    """The official train and test splits of ``name``, from the cache when the source is unchanged."""
    if name == "digits":
        return read_digits()
    if data_dir is None:
        raise UserError(f"{name} needs a data directory (data_dir)")
    data_dir = Path(data_dir).expanduser()
    if download and name in ("cifar10", "cifar100"):
        download_cifar(name, data_dir)
    elif download:
        raise UserError(f"{name} cannot be downloaded automatically; put its files under {data_dir}")
    if not data_dir.is_dir():
        what = "is a file, not a folder" if data_dir.exists() else "does not exist"
        raise UserError(f"data directory {data_dir} {what}")
    cache_dir = default_cache_dir(data_dir) if cache_dir is None else cache_dir
    if name in ("cifar10", "cifar100") and (find_cifar(name, data_dir) or not _is_image_folder(data_dir)):
        folder = locate_cifar(name, data_dir)
        files, options = cifar_files(name, folder), {"coarse_labels": coarse_labels}
        build = partial(read_cifar100, folder, coarse_labels) if name == "cifar100" else partial(read_cifar10, folder)
    elif name == "tinyimagenet":
        folder = locate_tinyimagenet(data_dir)
        files, options, build = tinyimagenet_files(folder), {}, partial(read_tinyimagenet, folder)
    else:  # an image folder, or a CIFAR copy laid out as one (always RGB)
        folder, channels = data_dir, channels if name == "imagefolder" else 3
        files = imagefolder_files(folder)
        options = {"image_size": image_size, **({"channels": channels} if channels else {})}
        build = partial(read_imagefolder, folder, image_size, channels=channels)
    raw = cached(cache_dir, name, folder, files, options, build)
    if name in ("cifar10", "cifar100") and build.func is read_imagefolder:
        _check_cifar_copy(name, raw, folder, coarse_labels)
    return raw


def _is_image_folder(path: Path) -> bool:
    return (path / "train").is_dir() and (path / "test").is_dir()


def _check_cifar_copy(name: str, raw: RawDataset, folder: Path, coarse_labels: bool) -> None:
    """A CIFAR copy in image-folder layout (e.g. the JPEG copy) must have 32x32 images and the official class
    folders, whose sorted names give the official label order."""
    classes_ok = raw.classes == list(CIFAR10_CLASSES) if name == "cifar10" else len(raw.classes) == 100
    if raw.train.images.shape[-1] != 32 or not classes_ok or coarse_labels:
        raise UserError(f"{folder} is not a {name} copy: expected 32x32 images in the official "
                        f"{len(CIFAR10_CLASSES) if name == 'cifar10' else 100} class folders (fine labels only)")


def _floored(std: tuple[float, ...]) -> tuple[float, ...]:
    """``std`` with each channel's standard deviation at least :data:`MIN_STD`, warning for each channel raised: a
    channel that hardly varies (say, blue always 0) would otherwise be divided by (nearly) zero."""
    for name, value in zip(CHANNEL_NAMES[len(std)], std):
        if value < MIN_STD:
            warnings.warn(f"the {name} channel of the training images is (nearly) constant, with a "
                          f"standard deviation of {value:.2g}; it is normalised with 1/255 (one grey level) instead")
    return tuple(max(value, MIN_STD) for value in std)


def _grey_stats(mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[tuple[float], tuple[float]]:
    """RGB statistics for grey images: each weighted as PIL weighs red, green and blue into grey."""
    return (sum(w * m for w, m in zip(LUMA, mean)),), (sum(w * s for w, s in zip(LUMA, std)),)


def _spec(name: str, raw: RawDataset, train_images: torch.Tensor, normalization: str) -> DatasetSpec:
    size, channels = raw.train.images.shape[-1], raw.train.images.shape[1]
    if normalization == "imagenet":
        mean, std = IMAGENET_STATS if channels == 3 else _grey_stats(*IMAGENET_STATS)
    elif normalization == "paper" and name in PAPER_STATS:
        mean, std = PAPER_STATS[name]
    else:
        mean, std = channel_stats(train_images)
        std = _floored(std)
    return DatasetSpec(name=name, num_classes=len(raw.classes), input_size=size, classes=list(raw.classes),
                       mean=mean, std=std, pad=size // 8, jitter=size >= 64, flip=name != "digits")


def load_dataset(name: str, data_dir: str | Path | None, *, holdout_fraction: float = 0.1, seed: int = 0,
                 limit: int | None = None, download: bool = False, cache_dir: str | Path | None = None,
                 image_size: int | None = None, channels: int | None = None, coarse_labels: bool = False,
                 normalization: str = "paper") -> Splits:
    """Load ``name`` (one of :data:`DATASETS`) from ``data_dir`` as train / holdout / test splits.

    - The holdout is a seeded random ``holdout_fraction`` of the official training set; the test split is
      the official test set (Tiny ImageNet: the official val set), untouched.
    - ``limit`` keeps the first ``limit`` training images *after* the holdout is carved out; the training
      split is in seeded random order, so they mix all classes, and holdout and normalisation statistics do
      not depend on ``limit``.
    - Decoded images are cached under ``cache_dir`` (default ``<data_dir>/.shallowdeep-cache``) and
      decoded again only when the source files change.
    - CIFAR-10/100 are read from the official pickles (``data_dir`` or ``data_dir/cifar-10-batches-py``),
      or from a copy in image-folder layout (``data_dir/{train,test}/<class>/``, e.g. the JPEG copy), whose
      sorted class folders are the official classes in official order.
    - ``download`` fetches CIFAR-10/100 when absent. ``image_size`` (imagefolder only) resizes every image
      to a square; ``channels`` (imagefolder only) reads every image as grey (1) or RGB (3) instead of as
      the folder's own (grey when every image is, else RGB); ``coarse_labels`` (cifar100 only) uses the
      20 superclasses.
    - ``normalization``: "paper" (default): the paper's statistics for CIFAR and Tiny ImageNet, the training
      split's own mean and std for imagefolder and digits; "imagenet": ImageNet's mean and std (for networks
      pretrained that way; grey images: its figures weighted into grey); "dataset": the training split's own
      mean and std.
    """
    if normalization not in NORMALIZATIONS:
        raise UserError(f"unknown normalization {normalization!r}; choose one of {', '.join(NORMALIZATIONS)}")
    if name not in DATASETS:
        raise UserError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    if image_size is not None and (name != "imagefolder" or image_size < 1):
        raise UserError("image_size must be a positive size and applies to imagefolder only")
    if channels is not None and (name != "imagefolder" or channels not in (1, 3)):
        raise UserError("channels must be 1 (grey) or 3 (RGB) and applies to imagefolder only")
    if coarse_labels and name != "cifar100":
        raise UserError("coarse_labels applies to cifar100 only")
    if limit is not None and limit < 1:
        raise UserError(f"limit must be a positive number of images, got {limit}")
    raw = _decode(name, data_dir, download, cache_dir, image_size, channels, coarse_labels)
    train, holdout = carve_holdout(raw.train, holdout_fraction, seed)
    spec = _spec(name, raw, train.images, normalization)
    if limit is not None:
        train = train.subset(slice(0, limit))
    return Splits(spec=spec, train=train, holdout=holdout, test=raw.test)
