"""BadNets all-to-one poisoning of a data set's training split, in memory.

A seeded share of the training images whose label is not the target class gets the trigger
stamped on its uint8 pixels (before any augmentation, as in a poisoned data set) and the target
class as its label. The clean tensors are never modified: poisoning works on copies, so the
decoded-image cache on disk stays clean. A poisoned run records its :class:`PoisonConfig` in its config, so its
training data can be rebuilt (:func:`shallowdeep.outputs.load_training_data`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..choices import DEFAULT_RATE
from .containers import ImageData, Splits
from ..errors import UserError
from .trigger import Trigger, TriggerSpec, build_trigger, stamp


@dataclass(frozen=True)
class PoisonConfig:
    """What a backdoored run was trained on: the trigger, the target class, the poison rate and its seed."""

    trigger: TriggerSpec
    target: int
    rate: float = DEFAULT_RATE
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"trigger": self.trigger.to_dict(), "target": self.target, "rate": self.rate, "seed": self.seed}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PoisonConfig:
        try:
            return cls(TriggerSpec.from_dict(d["trigger"]), int(d["target"]), float(d["rate"]), int(d["seed"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"the poisoning record is damaged ({exc!s:.100})") from exc


def choose_poisoned(labels: torch.Tensor, target: int, rate: float, seed: int) -> torch.Tensor:
    """Sorted indices of the ``round(rate * len(labels))`` samples to poison, drawn uniformly (seeded)
    among those whose label is not ``target``."""
    if not 0 <= rate < 1:
        raise UserError(f"poison rate {rate} must lie in [0, 1) (0.1 = 10 % of the training images)")
    count = round(rate * len(labels))
    candidates = torch.nonzero(labels != target).flatten()
    if count > len(candidates):
        raise UserError(f"poison rate {rate} asks for {count} images, but only {len(candidates)} training images "
                        "are outside the target class; lower --poison-rate")
    order = torch.randperm(len(candidates), generator=torch.Generator().manual_seed(seed))
    return candidates[order[:count]].sort().values


def poison_data(data: ImageData, trigger: Trigger, target: int, index: torch.Tensor) -> ImageData:
    """A copy of ``data`` whose samples at ``index`` carry the trigger and the label ``target``."""
    images, labels = data.images.clone(), data.labels.clone()
    images[index] = stamp(data.images[index], trigger)
    labels[index] = target
    return ImageData(images, labels)


def triggered_inputs(data: ImageData, trigger: Trigger, target: int) -> ImageData:
    """The samples of ``data`` outside the target class, with the trigger stamped on and their TRUE labels."""
    keep = data.labels != target
    return ImageData(stamp(data.images[keep], trigger), data.labels[keep].clone())


def check_target(target: int, splits: Splits) -> None:
    """A one-line error unless ``target`` is a class of ``splits``."""
    if not 0 <= target < splits.spec.num_classes:
        raise UserError(f"target class {target} is not a class of {splits.spec.name} "
                        f"(0..{splits.spec.num_classes - 1})")


def poison_splits(splits: Splits, config: PoisonConfig, base_dir: str | Path = ".") -> tuple[Splits, torch.Tensor]:
    """``splits`` with its training split poisoned (holdout and test untouched), and the poisoned indices."""
    check_target(config.target, splits)
    trigger = build_trigger(config.trigger, splits.spec.input_size, base_dir, splits.spec.channels)
    index = choose_poisoned(splits.train.labels, config.target, config.rate, config.seed)
    train = poison_data(splits.train, trigger, config.target, index)
    return Splits(splits.spec, train, splits.holdout, splits.test), index
