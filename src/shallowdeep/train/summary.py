"""What a training run is about to do, in a few lines printed before the first batch."""

from __future__ import annotations

import torch

from ..data import Splits
from ..sdn import SDN
from .recipe import TrainConfig, describe_recipe


def start_summary(net: SDN, splits: Splits, cfg: TrainConfig, device: torch.device, source: str,
                  resumed_at: tuple[int, int] | None = None) -> list[str]:
    """The data, the model and its exits with their costs, the recipe, the device and the batch source;
    ``resumed_at`` (epoch, batch) when continuing an interrupted run."""
    spec = net.spec
    shape = "x".join(map(str, spec.input_shape or ()))
    lines = [
        f"data: {splits.spec.name}, {len(splits.train)} train / {len(splits.holdout)} holdout / "
        f"{len(splits.test)} test images, {splits.spec.num_classes} classes, {shape}",
        f"model: {spec.arch or spec.factory or spec.library}, {net.backbone_flops / 1e6:.1f} MFLOPs per image",
    ]
    if net.ics:
        shares = " ".join(f"{100 * f / net.backbone_flops:.1f}" for f in net.exit_flops[:-1])
        lines.append(f"exits: {len(net.ics)} '{spec.ic.design}' ICs at {shares} % of the backbone's cost "
                     f"(heads included)")
    lines.append(f"mode: {cfg.mode}; recipe: {describe_recipe(cfg.recipe)}")
    lines.append(f"schedule: {cfg.recipe.schedule}" + (f" ({cfg.recipe.note})" if cfg.recipe.note else ""))
    threads = f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""
    lines.append(f"device: {device}{threads}; batches: {source}")
    if resumed_at is not None and resumed_at[0] >= cfg.recipe.epochs:  # ZTW: only the ensemble is left
        lines.append(f"resuming after the last epoch ({cfg.recipe.epochs}): fitting the exit ensemble")
    elif resumed_at is not None:
        lines.append(f"resuming at epoch {resumed_at[0] + 1}, batch {resumed_at[1] + 1}")
    return lines
