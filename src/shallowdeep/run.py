"""A run folder: everything a training run leaves, enough for every later command.

Layout::

    RUN/config.json      how the run was made: data set, model spec, mode, recipe
    RUN/checkpoint.pt    the latest state (model, optimiser, progress), written atomically
    RUN/metrics.jsonl    one JSON line per finished epoch
    RUN/backbone.py      a copy of the user's backbone file, when one was given
    RUN/outputs/*.npz    per-exit logits of each split (see shallowdeep.outputs)
    RUN/*.json, *.png    what the analysis commands write
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .build import build_sdn, load_checkpoint_file
from .errors import UserError
from .sdn import SDN

CONFIG = "config.json"
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
CHECKPOINT_FORMAT = "shallowdeep-checkpoint-1"


@dataclass
class Run:
    """An existing run folder and its configuration."""

    path: Path
    config: dict[str, Any]

    @property
    def checkpoint_path(self) -> Path:
        return self.path / CHECKPOINT

    def load_checkpoint(self) -> dict[str, Any]:
        """The checkpoint dict, checked for its format."""
        ckpt = load_checkpoint_file(self.checkpoint_path)
        if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
            raise UserError(f"{self.checkpoint_path} is not a shallowdeep checkpoint")
        return ckpt

    def load_net(self, device: str | torch.device = "cpu") -> SDN:
        """The trained SDN of this run, in eval mode on ``device``."""
        ckpt = self.load_checkpoint()
        net = build_sdn(self.config["model"], self.path)
        try:
            net.load_state_dict(ckpt["model"])
        except RuntimeError as exc:
            raise UserError(f"{self.checkpoint_path} does not match the model in {CONFIG}: {first_line(exc)}") from exc
        return net.to(device).eval()

    def read_metrics(self) -> list[dict[str, Any]]:
        """The metrics log, one dict per epoch; a damaged line is an error naming it."""
        path = self.path / METRICS
        if not path.exists():
            return []
        rows = []
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise UserError(f"{path} line {number} is not valid JSON; delete or repair that line") from exc
        return rows


def open_run(path: str | Path) -> Run:
    """Open an existing run folder, with one-line errors for missing or damaged files."""
    path = Path(path)
    config_path = path / CONFIG
    if not path.is_dir():
        raise UserError(f"run folder {path} does not exist")
    if not config_path.is_file():
        raise UserError(f"{path} is not a run folder: {CONFIG} is missing")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{config_path} is damaged (not valid JSON)") from exc
    if not isinstance(config, dict) or "model" not in config or "data" not in config:
        raise UserError(f"{config_path} lacks the 'model' or 'data' section")
    return Run(path, config)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
