"""Data sets: decode once (cached uint8 tensors), split train / holdout / test, batched augmentation.

Entry points: :func:`load_dataset` returns :class:`Splits`; :func:`batches` yields normalised batches.
"""

from shallowdeep.data.containers import DatasetSpec, ImageData, RawDataset, Splits
from shallowdeep.data.dataset import DATASETS, load_dataset
from shallowdeep.data.loader import batches, num_batches

__all__ = ["DATASETS", "DatasetSpec", "ImageData", "RawDataset", "Splits", "batches", "load_dataset", "num_batches"]
