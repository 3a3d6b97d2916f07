"""The whole story on the embedded data set (scikit-learn's handwritten digits), offline, in minutes.

Trains ResNet-56 as a plain CNN, turns it into an SDN by IC-only training, trains a second SDN
jointly, and evaluates every exit of both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from .evaluate import exit_table
from .io import atomic_write_json
from .outputs import load_outputs
from .run import open_run
from .train import Recipe, TrainConfig, new_run

DATA = {"name": "digits", "data_dir": None, "holdout_fraction": 0.1, "seed": 0, "limit": None, "download": False}
ARCH = "resnet56"
CNN_RECIPE = Recipe("sgd", 0.05, 12, [8, 11], batch_size=64, weight_decay=1e-4)
IC_RECIPE = Recipe("adam", 1e-3, 10, [7], batch_size=64, weight_decay=1e-4)


def run_demo(out: Path, device: torch.device, progress=None,
             log: Callable[[str], None] = lambda line: None) -> dict[str, Any]:
    """Train and evaluate the demo runs under ``out``; returns (and writes ``out/demo.json``) the per-exit tables."""
    runs = {"cnn": out / "cnn", "ic-only": out / "ic-only", "sdn": out / "sdn"}
    model = {"arch": ARCH, "exits": None}
    steps = [
        ("cnn", TrainConfig("cnn", CNN_RECIPE), None),
        ("ic-only", TrainConfig("ic-only", IC_RECIPE), runs["cnn"]),
        ("sdn", TrainConfig("sdn", CNN_RECIPE), None),
    ]
    results: dict[str, Any] = {"data": "digits (scikit-learn, 16x16)", "arch": ARCH, "runs": {}}
    for mode, cfg, pretrained in steps:
        log(f"training {mode} ({cfg.recipe.epochs} epochs) -> {runs[mode]}")
        new_run(runs[mode], DATA, dict(model), cfg, pretrained=str(pretrained) if pretrained else None,
                device=device, progress=progress)
        run = open_run(runs[mode])
        results["runs"][mode] = {"path": str(runs[mode]),
                                 "test": exit_table(load_outputs(run, "test", device), run.config["model"]["exits"])}
    atomic_write_json(out / "demo.json", results)
    return results
