"""scikit-learn's 8x8 handwritten digits as a tiny offline demo data set (16x16 RGB)."""

from __future__ import annotations

import numpy as np
import torch

from shallowdeep.data.containers import ImageData, RawDataset

TEST_FRACTION = 0.2  # the last 20 % of scikit-learn's order is the test split


def read_digits() -> RawDataset:
    """The 1,797 digits scaled from 0..16 to 0..255, upscaled 2x (nearest) to 16x16, grey copied to 3 channels."""
    from sklearn.datasets import load_digits  # here: importing scikit-learn takes most of a second

    digits = load_digits()
    grey = np.rint(digits.images * (255 / 16)).astype(np.uint8)
    grey = grey.repeat(2, axis=1).repeat(2, axis=2)
    images = torch.from_numpy(np.repeat(grey[:, None], 3, axis=1))
    labels = torch.from_numpy(digits.target.astype(np.int64))
    n_train = len(labels) - round(len(labels) * TEST_FRACTION)
    return RawDataset(ImageData(images[:n_train], labels[:n_train]), ImageData(images[n_train:], labels[n_train:]),
                      [str(d) for d in range(10)])
