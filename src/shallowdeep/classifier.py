"""A trained run as a classifier of new images: its SDN with the preprocessing it was trained with.

>>> clf = shallowdeep.load("runs/r56-ic")
>>> answer = clf.predict(images, threshold=0.9)              # uint8 (N, C, H, W), or floats in [0, 1]
>>> answer = clf.predict_files(["cat.png", "photos/"], threshold=0.9)   # files; folders read recursively
>>> answer.classes, answer.exits, answer.flops, answer.paths
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .data.augment import normalize
from .images import decode_images, image_files
from .errors import UserError
from .exits import ExitPolicy, early_exit_stream, run_backbone
from .outputs import load_run_data
from .predict_inputs import check_batch_size, checked_pixels
from .run import Run, open_run
from .sdn import SDN

BATCH_SIZE = 256  # images per forward pass


@dataclass
class Answer:
    """Per image: the predicted class index and name, the exit it left at (``len(ICs)``: the final
    head) and the FLOPs it cost; ``paths``: the image files, when they were read from files."""

    indices: torch.Tensor
    classes: list[str]
    exits: torch.Tensor
    flops: torch.Tensor
    paths: list[Path] | None = None


@dataclass
class Classifier:
    """An SDN with its class names, input shape (channels, height, width) and normalisation, in eval mode."""

    net: SDN
    class_names: list[str]
    input_shape: tuple[int, ...]
    mean: Sequence[float]
    std: Sequence[float]

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def preprocess(self, images: torch.Tensor | np.ndarray | Sequence) -> torch.Tensor:
        """Normalised float inputs for ``images``: (N, C, H, W) uint8 pixels as read from files, or floats in [0, 1];
        one image may be (C, H, W), and a list of images is stacked. Integers within 0..255 are taken as uint8; a
        one-line error names the fix for anything else (other values, NaN, file names, another shape than the
        run's)."""
        return self._normalised(self._pixels(images))

    def _pixels(self, images: torch.Tensor | np.ndarray | Sequence) -> torch.Tensor:
        """``images`` (see :meth:`preprocess`) as checked (N, C, H, W) pixels: uint8, or floats in [0, 1]."""
        return torch.from_numpy(np.ascontiguousarray(checked_pixels(images, self.input_shape)))

    def _normalised(self, pixels: torch.Tensor) -> torch.Tensor:
        """The network's inputs for checked ``pixels`` (see :meth:`_pixels`), on its device."""
        return normalize(pixels.to(self.device), self.mean, self.std)

    def read_images(self, paths: str | Path | Sequence[str | Path]) -> tuple[list[Path], torch.Tensor]:
        """The image files ``paths`` name (folders read recursively) and their pixels, decoded as the run's data
        was: grey or RGB as the network takes them, resized (bilinear) to its input size. A file that cannot be
        read is a one-line error naming it."""
        channels, _, side = self.input_shape
        files = image_files(paths)
        return files, torch.from_numpy(decode_images(files, image_size=side, channels=channels))

    @torch.inference_mode()
    def predict(self, images: torch.Tensor | np.ndarray, threshold: float | None = None,
                policy: ExitPolicy | str | None = None, batch_size: int = BATCH_SIZE) -> Answer:
        """Classify ``images`` (see :meth:`preprocess`), ``batch_size`` at a time: with the final head alone (no
        threshold or policy), or with early exit (the streaming engine: every stage runs on full batches)."""
        check_batch_size(batch_size)
        x = self._pixels(images)
        if x.shape[0] == 0:
            raise UserError("no images to classify")
        chunks = (self._normalised(chunk) for chunk in x.split(batch_size))
        if threshold is None and policy is None:
            indices = torch.cat([run_backbone(self.net, chunk).argmax(dim=1) for chunk in chunks])
            exits, flops = torch.full_like(indices, len(self.net.ics)), torch.full_like(indices, self.net.backbone_flops)
        else:
            indices, exits, flops = early_exit_stream(self.net, chunks, threshold, policy, batch_size)
        return Answer(indices, [self.class_names[i] for i in indices.tolist()], exits, flops)

    def predict_files(self, paths: str | Path | Sequence[str | Path], threshold: float | None = None,
                      policy: ExitPolicy | str | None = None, batch_size: int = BATCH_SIZE) -> Answer:
        """:meth:`predict` on the image files ``paths`` name (see :meth:`read_images`; one path alone is a file or
        folder too), with their paths."""
        check_batch_size(batch_size)
        files, images = self.read_images(paths)
        answer = self.predict(images, threshold, policy, batch_size)
        answer.paths = files
        return answer


def load(run_dir: str | Path, device: str | torch.device = "cpu") -> Classifier:
    """The trained SDN of ``run_dir`` in eval mode on ``device``, with the class names and normalisation of
    the data it was trained on."""
    run = open_run(run_dir)
    net = run.load_net(device)
    classes, mean, std = _preprocessing(run)
    return Classifier(net, classes, tuple(net.spec.input_shape), mean, std)


def _preprocessing(run: Run) -> tuple[list[str], Sequence[float], Sequence[float]]:
    """The class names and normalisation the run recorded; a run of an early version, which recorded none,
    takes them from its data set (which must then be where it was)."""
    record = run.config.get("data_record") or {}
    if {"classes", "mean", "std"} <= set(record):
        return list(record["classes"]), record["mean"], record["std"]
    spec = load_run_data(run).spec
    return list(spec.classes), spec.mean, spec.std
