"""Per-exit outputs of a network on one data split, as plain NumPy arrays (no torch; nothing from the package
beyond the error type), so that analyses and benchmarks can read them without building a network."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .errors import UserError


@dataclass
class ExitOutputs:
    """Logits of every exit on one split."""

    logits: np.ndarray  # float32 (exits, samples, classes), the final head last
    labels: np.ndarray  # int64 (samples,)
    exit_flops: np.ndarray  # int64 (exits,), cumulative FLOPs per image
    backbone_flops: int

    def __post_init__(self) -> None:
        shape = np.shape(self.logits)
        if len(shape) != 3 or np.shape(self.labels) != shape[1:2] or np.shape(self.exit_flops) != shape[:1]:
            raise UserError(f"per-exit outputs disagree: logits {shape} (exits, samples, classes), labels "
                            f"{np.shape(self.labels)}, exit FLOPs {np.shape(self.exit_flops)}")

    @property
    def predictions(self) -> np.ndarray:
        """Predicted class of every exit, (exits, samples)."""
        return self.logits.argmax(-1)

    @property
    def correct(self) -> np.ndarray:
        """Whether each exit is right on each sample, (exits, samples)."""
        return self.predictions == self.labels[None, :]

    def subset(self, index: np.ndarray) -> ExitOutputs:
        """The outputs of the samples at ``index`` (an integer array), in its order."""
        index = np.asarray(index, dtype=np.int64)
        return ExitOutputs(self.logits[:, index], self.labels[index], self.exit_flops, self.backbone_flops)


def exit_names(num_exits: int, layers: Sequence[str] | None = None) -> list[str]:
    """One name per exit, ``"final"`` last: the ICs' ``layers`` (a list or tuple, e.g. a run's recorded exits) when
    they name every IC, else ``IC 1 .. IC K``: the one place exit names are made."""
    if isinstance(layers, (list, tuple)) and len(layers) == num_exits - 1:
        return [*map(str, layers), "final"]
    return [f"IC {i + 1}" for i in range(num_exits - 1)] + ["final"]
