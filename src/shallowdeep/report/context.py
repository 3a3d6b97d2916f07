"""What every report section reads (the run, its data and per-exit outputs) and where it writes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
