"""Decode once: a uint8 array cache on disk, keyed by a fingerprint of the source files.

A cache file is an uncompressed ``.npz`` (read with ``allow_pickle=False``) named
``<name>-<key>-<fingerprint>.npz``. The key hashes the data root and the reader options; the fingerprint
also hashes every source file's path (relative to the root), size, inode, and modification and status-change
times, so any change to the source gives a new file, and the older file with the same name and key is then
deleted. (The status-change time, unlike the modification time, cannot be set back: a file written over in
place and given its old modification time still changes it. Copying or moving the data elsewhere changes it
too, and the data is decoded once more.)
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from shallowdeep.data.containers import ImageData, RawDataset
from shallowdeep.errors import UserError
from shallowdeep.io import atomic_save_npz

CACHE_FOLDER = ".shallowdeep-cache"
FORMAT_VERSION = 2  # 2: grey image folders are decoded as 1 channel, no longer copied to RGB


def default_cache_dir(data_dir: str | Path) -> Path:
    """``<data_dir>/.shallowdeep-cache``, or ``~/.cache/shallowdeep`` when ``data_dir`` is not writable."""
    preferred = Path(data_dir).expanduser() / CACHE_FOLDER
    try:
        preferred.mkdir(exist_ok=True)
    except OSError:
        pass
    if preferred.is_dir() and os.access(preferred, os.W_OK):
        return preferred
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "shallowdeep"


def fingerprint(root: Path, files: list[Path], options: dict) -> str:
    """A hex digest of ``options`` and each file's path relative to ``root``, size, inode, mtime and ctime."""
    prefix = os.path.join(str(root), "")
    entries = []
    for path in map(str, files):
        try:
            stat = os.stat(path)
        except FileNotFoundError:
            raise UserError(f"missing file {path}") from None
        entries.append([path.removeprefix(prefix), stat.st_size, stat.st_ino, stat.st_mtime_ns, stat.st_ctime_ns])
    blob = json.dumps({"version": FORMAT_VERSION, "options": options, "files": entries}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _save(path: Path, data: RawDataset) -> None:
    atomic_save_npz(path, train_images=data.train.images.numpy(), train_labels=data.train.labels.numpy(),
                    test_images=data.test.images.numpy(), test_labels=data.test.labels.numpy(),
                    classes=np.array(data.classes, dtype=np.str_))


def _load(path: Path) -> RawDataset | None:
    """The cached data set, or None when the file is unreadable."""
    try:
        with np.load(path, allow_pickle=False) as arrays:
            tensors = {key: torch.from_numpy(arrays[key]) for key in
                       ("train_images", "train_labels", "test_images", "test_labels")}
            classes = [str(c) for c in arrays["classes"]]
        return RawDataset(ImageData(tensors["train_images"], tensors["train_labels"]),
                          ImageData(tensors["test_images"], tensors["test_labels"]), classes)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None


def cached(cache_dir: str | Path, name: str, root: Path, files: list[Path], options: dict,
           build: Callable[[], RawDataset]) -> RawDataset:
    """The data set from the cache when the fingerprint matches; else ``build()`` it and store it.

    ``files`` are the source files ``build`` reads, ``options`` (JSON-able) the reader options.
    """
    cache_dir = Path(cache_dir).expanduser()
    key = json.dumps([str(Path(root).resolve()), options], sort_keys=True)
    prefix = f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:8]}-"
    path = cache_dir / f"{prefix}{fingerprint(root, files, options)[:16]}.npz"
    if path.is_file() and (data := _load(path)) is not None:
        return data
    data = build()
    try:
        _save(path, data)
    except OSError as err:
        raise UserError(f"cannot write the data cache {path} ({err}); put it elsewhere with --cache-dir DIR "
                        "(cache_dir in Python)") from None
    for stale in cache_dir.glob(f"{prefix}*.npz"):
        if stale != path:
            stale.unlink(missing_ok=True)
    return data
