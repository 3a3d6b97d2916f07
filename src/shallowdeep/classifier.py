"""A trained run as a classifier of new images: its SDN with the preprocessing it was trained with.

>>> clf = load_classifier("runs/r56-ic")
>>> answer = clf.predict(images, threshold=0.9)      # uint8 (N, C, H, W), or floats in [0, 1]
>>> answer.classes, answer.exits, answer.flops
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .data.augment import normalize
from .errors import UserError
from .exits import ExitPolicy, early_exit, run_backbone
from .run import open_run
from .sdn import SDN


@dataclass
class Answer:
    """Per image: the predicted class index and name, the exit it left at (``len(ICs)``: the final
    head) and the FLOPs it cost."""

    indices: torch.Tensor
    classes: list[str]
    exits: torch.Tensor
    flops: torch.Tensor


@dataclass
class Classifier:
    """An SDN with its class names, input shape and normalisation, in eval mode."""

    net: SDN
    class_names: list[str]
    input_shape: tuple[int, ...]
    mean: Sequence[float]
    std: Sequence[float]

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def preprocess(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Normalised float inputs for ``images``: uint8 (N, C, H, W) or (C, H, W) as read from files, or
        floats already in [0, 1]; a one-line error when their shape is not the run's."""
        x = torch.as_tensor(images)
        x = x.unsqueeze(0) if x.dim() == len(self.input_shape) else x
        if tuple(x.shape[1:]) != tuple(self.input_shape):
            raise UserError(f"images of shape {tuple(x.shape[1:])} given, but this network takes "
                            f"{tuple(self.input_shape)} (channels, height, width)")
        return normalize(x.to(self.device), self.mean, self.std)

    @torch.inference_mode()
    def predict(self, images: torch.Tensor | np.ndarray, threshold: float | None = None,
                policy: ExitPolicy | str | None = None) -> Answer:
        """Classify ``images``: with the final head alone (no threshold or policy), or with early exit."""
        x = self.preprocess(images)
        if threshold is None and policy is None:
            indices = run_backbone(self.net, x).argmax(dim=1)
            exits = torch.full_like(indices, len(self.net.ics))
            flops = torch.full_like(indices, self.net.backbone_flops)
        else:
            indices, exits, flops = early_exit(self.net, x, threshold, policy)
        return Answer(indices, [self.class_names[i] for i in indices.tolist()], exits, flops)


def load_classifier(run_dir: str | Path, device: str | torch.device = "cpu") -> Classifier:
    """The trained network of ``run_dir`` with the class names and normalisation its data had."""
    run = open_run(run_dir)
    record = run.config.get("data_record") or {}
    if not {"classes", "mean", "std"} <= set(record):
        raise UserError(f"{run.path} does not record its data's classes and normalisation (made by an earlier "
                        "version); train it again to classify new images with it")
    net = run.load_net(device)
    return Classifier(net, list(record["classes"]), tuple(net.spec.input_shape), record["mean"], record["std"])
