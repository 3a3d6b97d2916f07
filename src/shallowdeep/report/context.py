"""What every report section reads (the run, its data and per-exit outputs) and where it writes."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data import Splits
from ..exit_outputs import ExitOutputs, exit_names
from ..run import Run
from . import html


@dataclass
class ReportContext:
    """Inputs of the report and the figures and numbers collected so far."""

    run: Run
    out_dir: Path
    splits: Splits
    outputs: dict[str, ExitOutputs]  # per split: "train", "holdout", "test"
    device: torch.device
    seed: int = 0  # of the random draws of example images and Grad-CAM samples
    figures: dict[str, bytes] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def num_exits(self) -> int:
        return self.outputs["test"].logits.shape[0]

    @property
    def exit_names(self) -> list[str]:
        """Short exit names for tables and plots: IC 1 .. IC K, final."""
        return exit_names(self.num_exits)

    @property
    def layer_names(self) -> list[str]:
        """Where each exit reads the backbone (as the run's config names it), the final head last."""
        exits = self.run.config.get("model", {}).get("exits")
        if isinstance(exits, list) and len(exits) == self.num_exits - 1:
            return [str(e) for e in exits] + ["final head"]
        return ["?"] * (self.num_exits - 1) + ["final head"]

    def add_figure(self, name: str, png: bytes, caption: str) -> str:
        """Keep ``png`` to be written as ``name``.png and return its embedded HTML figure."""
        self.figures[f"{name}.png"] = png
        return html.figure(png, caption)

    def sample(self, candidates: np.ndarray, count: int, purpose: str) -> np.ndarray:
        """Up to ``count`` of the test-split indices ``candidates``, drawn at random and balanced over their true
        classes; the same for the same seed and ``purpose`` (which keeps the draws of different rows apart)."""
        rng = np.random.default_rng([self.seed, zlib.crc32(purpose.encode())])
        return balanced_sample(candidates, self.outputs["test"].labels, count, rng)


def balanced_sample(candidates: np.ndarray, labels: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Up to ``count`` of ``candidates`` (indices into ``labels``): a random shuffle of them taken round-robin over
    their classes, so each class gives one before any gives a second."""
    shuffled = rng.permutation(np.asarray(candidates, dtype=np.int64))
    classes = np.asarray(labels)[shuffled]
    rank = np.zeros(shuffled.size, dtype=np.int64)  # how many of its class come before it in the shuffle
    for c in np.unique(classes):
        rank[classes == c] = np.arange(np.count_nonzero(classes == c))
    return shuffled[np.argsort(rank, kind="stable")][:count]
