"""Plain containers for decoded images: one split, a whole decoded data set, and the data set's recipe."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ImageData:
    """One split: uint8 images (N, C, H, W), C = 1 (grey) or 3 (RGB), and int64 labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4 or self.images.shape[1] not in (1, 3):
            raise ValueError(f"images must be uint8 (N, 1 or 3, H, W), got {self.images.dtype} "
                             f"{tuple(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.shape != self.images.shape[:1]:
            raise ValueError(f"labels must be int64 ({self.images.shape[0]},), got {self.labels.dtype} "
                             f"{tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return self.labels.shape[0]

    def subset(self, index: torch.Tensor | slice) -> ImageData:
        """The images and labels at ``index`` (a slice or an index tensor)."""
        return ImageData(self.images[index], self.labels[index])

    def to(self, device: torch.device | str) -> ImageData:
        """This split on ``device`` (no copy when it is already there)."""
        return ImageData(self.images.to(device), self.labels.to(device))


@dataclass
class RawDataset:
    """What a reader decodes: the official train and test splits and the class names."""

    train: ImageData
    test: ImageData
    classes: list[str]


@dataclass
class DatasetSpec:
    """Everything a model and the input pipeline need to know about a data set.

    Augmentation: random crops from the image zero-padded by ``pad`` pixels, horizontal flips when
    ``flip``, and mild colour jitter when ``jitter`` (32x32: pad 4, flip, no jitter; 64x64: pad 8, flip, jitter).
    ``mean`` and ``std`` hold one value per channel: 1 (grey) or 3 (RGB).
    """

    name: str
    num_classes: int
    input_size: int
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    pad: int
    jitter: bool
    flip: bool = True

    @property
    def channels(self) -> int:
        return len(self.mean)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of the images."""
        return self.channels, self.input_size, self.input_size


@dataclass
class Splits:
    """A data set ready to use: its spec and its train, holdout (carved from train) and test splits."""

    spec: DatasetSpec
    train: ImageData
    holdout: ImageData
    test: ImageData
