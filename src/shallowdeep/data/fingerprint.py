"""What a run records about its data, so that later commands notice when the data changed under it."""

from __future__ import annotations

import hashlib
from typing import Any

from ..errors import UserError
from .containers import ImageData, Splits


def split_fingerprint(data: ImageData) -> str:
    """A short hash of a split's images and labels (their order included)."""
    digest = hashlib.sha256()
    digest.update(str(tuple(data.images.shape)).encode())
    digest.update(data.images.contiguous().numpy().tobytes())
    digest.update(data.labels.contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def data_record(splits: Splits) -> dict[str, Any]:
    """The classes, image shape and normalisation of a data set, and the size and fingerprint of each split."""
    spec = splits.spec
    parts = {name: getattr(splits, name) for name in ("train", "holdout", "test")}
    return {"classes": list(spec.classes), "input_shape": list(splits.train.images.shape[1:]),
            "mean": list(spec.mean), "std": list(spec.std),
            "splits": {name: {"images": len(data), "fingerprint": split_fingerprint(data)}
                       for name, data in parts.items()}}


def check_same_task(record: dict[str, Any] | None, splits: Splits, where: str) -> None:
    """A one-line error when ``splits`` has other classes or another image shape than the ``record`` a run
    kept (None: a run from before records were kept, not checked)."""
    if not record:
        return
    classes = list(splits.spec.classes)
    if classes != record["classes"]:
        added = [c for c in classes if c not in record["classes"]]
        removed = [c for c in record["classes"] if c not in classes]
        change = "; ".join(part for part in (f"added {', '.join(added[:3])}" if added else "",
                                             f"removed {', '.join(removed[:3])}" if removed else "") if part)
        raise UserError(f"the classes of this data set differ from those {where} was trained on "
                        f"({change or 'same names, another order'}); every label would shift")
    shape = list(splits.train.images.shape[1:] if len(splits.train) else splits.test.images.shape[1:])
    if shape != record["input_shape"]:
        raise UserError(f"this data set's images are {'x'.join(map(str, shape))}, but {where} was trained on "
                        f"{'x'.join(map(str, record['input_shape']))}")


def check_same_data(record: dict[str, Any] | None, splits: Splits, names: tuple[str, ...], where: str,
                    source: str) -> None:
    """A one-line error when a split of ``names`` in ``splits`` (read from ``source``) is not the one whose size
    and fingerprint the ``record`` of ``where`` kept (None: a run from before records were kept, not checked)."""
    for name in names:
        kept = ((record or {}).get("splits") or {}).get(name)
        if not kept:
            continue
        data = getattr(splits, name)
        if len(data) != kept["images"] or split_fingerprint(data) != kept["fingerprint"]:
            raise UserError(f"the {name} split of {source} ({len(data)} images) is not the one {where} was trained "
                            f"and measured on ({kept['images']} images, another fingerprint); give the folder of "
                            "that data set")
