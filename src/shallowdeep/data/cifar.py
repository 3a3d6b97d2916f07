"""CIFAR-10 and CIFAR-100 in the official python-pickle layout, and their download."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shallowdeep.data.containers import ImageData, RawDataset
from shallowdeep.data.download import extract_tar, fetch_verified
from shallowdeep.data.safe_pickle import load_pickle
from shallowdeep.errors import UserError


@dataclass(frozen=True)
class CifarLayout:
    """Where one CIFAR variant's files live and where they come from."""

    folder: str
    marker: str  # a file that identifies the folder itself
    url: str
    md5: str


CIFAR_LAYOUTS = {
    "cifar10": CifarLayout("cifar-10-batches-py", "batches.meta",
                           "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                           "c58f30108f718f92721af3b95e74349a"),
    "cifar100": CifarLayout("cifar-100-python", "meta",
                            "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                            "eb9058c3a382ffc7106e4002c42a8d85"),
}
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_EXPECTED = {"cifar10": "data_batch_1..5, test_batch, batches.meta", "cifar100": "train, test, meta"}


def _where_to_put(name: str, root: Path) -> str:
    layout = CIFAR_LAYOUTS[name]
    return (f"download {layout.url} and extract it so that {root / layout.folder}/ holds {_EXPECTED[name]}"
            f" (or pass download=True)")


def find_cifar(name: str, root: str | Path) -> Path | None:
    """The folder holding ``name``'s official files: ``root`` itself or ``root/<official folder name>``."""
    root = Path(root).expanduser()
    layout = CIFAR_LAYOUTS[name]
    return next((f for f in (root, root / layout.folder) if (f / layout.marker).is_file()), None)


def locate_cifar(name: str, root: str | Path) -> Path:
    """Like :func:`find_cifar`, but a UserError telling where to put the files when they are absent."""
    folder = find_cifar(name, root)
    if folder is None:
        raise UserError(f"no {name} files under {root}: {_where_to_put(name, Path(root).expanduser())}")
    return folder


def download_cifar(name: str, root: str | Path) -> Path:
    """Download, verify (md5) and extract ``name`` ("cifar10" or "cifar100") into ``root`` unless present."""
    if name not in CIFAR_LAYOUTS:
        raise UserError(f"no download for {name!r}; choose one of {', '.join(CIFAR_LAYOUTS)}")
    root = Path(root).expanduser()
    layout = CIFAR_LAYOUTS[name]
    folder = root / layout.folder
    if (folder / layout.marker).is_file():
        return folder
    extract_tar(fetch_verified(layout.url, layout.md5, _where_to_put(name, root)), root)
    if not (folder / layout.marker).is_file():
        raise UserError(f"the {name} archive has no {layout.folder}/{layout.marker}; {_where_to_put(name, root)}")
    return folder


def cifar_files(name: str, folder: Path) -> list[Path]:
    """The files the reader of ``name`` decodes from ``folder`` (see :func:`locate_cifar`)."""
    if name == "cifar100":
        return [folder / "meta", folder / "train", folder / "test"]
    batches = sorted(folder.glob("data_batch_*"), key=lambda p: p.name)
    if not batches:
        raise UserError(f"no data_batch_* files in {folder}; {_where_to_put(name, folder.parent)}")
    return [folder / "batches.meta", *batches, folder / "test_batch"]


def _text_keys(obj: Any, path: Path) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise UserError(f"{path} is not a CIFAR dictionary; re-download the data set")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _names(meta: dict[str, Any], key: str, path: Path) -> list[str]:
    if key not in meta:
        raise UserError(f"{path} has no {key!r}; re-download the data set")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in meta[key]]


def _read_batch(path: Path, label_key: str, num_classes: int) -> ImageData:
    batch = _text_keys(load_pickle(path), path)
    data, labels = batch.get("data"), batch.get(label_key)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise UserError(f"{path} has no uint8 (N, 3072) 'data' array; re-download the data set")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        raise UserError(f"{path} has no integer {label_key!r} list; re-download the data set") from None
    if labels.shape != (data.shape[0],) or (labels.size and (labels.min() < 0 or labels.max() >= num_classes)):
        raise UserError(f"{path} has {labels.size} {label_key!r} for {data.shape[0]} images, or labels out of "
                        f"range 0..{num_classes - 1}; re-download the data set")
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    return ImageData(images, torch.from_numpy(labels))


def _concat(parts: list[ImageData]) -> ImageData:
    return ImageData(torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts]))


def read_cifar10(root: str | Path) -> RawDataset:
    """CIFAR-10 from ``root`` (see :func:`locate_cifar`): whichever data_batch_* exist, test_batch, batches.meta."""
    folder = locate_cifar("cifar10", root)
    meta_path, *batch_paths, test_path = cifar_files("cifar10", folder)
    classes = _names(_text_keys(load_pickle(meta_path), meta_path), "label_names", meta_path)
    train = _concat([_read_batch(p, "labels", len(classes)) for p in batch_paths])
    return RawDataset(train, _read_batch(test_path, "labels", len(classes)), classes)


def read_cifar100(root: str | Path, coarse_labels: bool = False) -> RawDataset:
    """CIFAR-100 from ``root`` (see :func:`locate_cifar`); fine labels (100) unless ``coarse_labels`` (20)."""
    folder = locate_cifar("cifar100", root)
    meta_path, train_path, test_path = cifar_files("cifar100", folder)
    kind = "coarse" if coarse_labels else "fine"
    classes = _names(_text_keys(load_pickle(meta_path), meta_path), f"{kind}_label_names", meta_path)
    train = _read_batch(train_path, f"{kind}_labels", len(classes))
    return RawDataset(train, _read_batch(test_path, f"{kind}_labels", len(classes)), classes)
