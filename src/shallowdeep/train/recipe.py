"""The paper's training recipes as plain values, and the schedules derived from them."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

from ..choices import PAPER_RECIPES
from ..errors import UserError

SDN_TAU_START = 0.01
USER_BACKBONE_WEIGHT_DECAY = 1e-4  # for a backbone the registry does not know


@dataclass
class Recipe:
    """Optimiser and schedule of one training run."""

    optimizer: str  # "sgd" or "adam"
    lr: float
    epochs: int
    milestones: list[int]  # epochs at which the learning rate is multiplied by ``gamma``
    gamma: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    batch_size: int = 128

    def lr_at(self, epoch: int) -> float:
        """Learning rate during ``epoch`` (0-based)."""
        return self.lr * self.gamma ** sum(epoch >= m for m in self.milestones)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_recipe(mode: str, weight_decay: float) -> Recipe:
    """The paper's recipe for ``mode``; ``weight_decay`` is the backbone's (5e-4 VGG/WRN, 1e-4 ResNet/MobileNet)."""
    if mode not in PAPER_RECIPES:
        raise ValueError(f"unknown mode {mode}")
    paper = PAPER_RECIPES[mode]
    return Recipe(**{**paper, "milestones": list(paper["milestones"])}, weight_decay=weight_decay)


def scale_milestones(recipe: Recipe, epochs: int) -> Recipe:
    """The recipe shortened or stretched to ``epochs``, its milestones moved in proportion."""
    scaled = [max(1, round(m * epochs / recipe.epochs)) for m in recipe.milestones]
    return Recipe(**{**recipe.to_dict(), "epochs": epochs, "milestones": [m for m in scaled if m < epochs]})


def resolve_recipe(mode: str, weight_decay: float, changes: Mapping[str, Any]) -> Recipe:
    """The recipe a run trains with: the paper's for ``mode`` and the backbone's ``weight_decay``, with
    the user's ``changes`` (``epochs`` moves the milestones in proportion; any other field of
    :class:`Recipe` replaces its value). A one-line error names a value out of range."""
    changes = {k: v for k, v in changes.items() if v is not None}
    unknown = set(changes) - {f.name for f in fields(Recipe)}
    if unknown:
        raise ValueError(f"not recipe settings: {sorted(unknown)}")
    recipe = default_recipe(mode, weight_decay)
    if "epochs" in changes:
        if changes["epochs"] < 1:
            raise UserError("--epochs must be at least 1")
        recipe = scale_milestones(recipe, changes["epochs"])
    recipe = Recipe(**{**recipe.to_dict(), **changes})
    checks = (("--lr", recipe.lr, math.isfinite(recipe.lr) and recipe.lr > 0, "a positive number"),
              ("--weight-decay", recipe.weight_decay, math.isfinite(recipe.weight_decay) and recipe.weight_decay >= 0,
               "zero or a positive number"),
              ("--momentum", recipe.momentum, 0 <= recipe.momentum < 1, "from 0 up to (not including) 1"),
              ("--batch-size", recipe.batch_size, recipe.batch_size >= 1, "at least 1"),
              ("--milestones", recipe.milestones, all(m >= 1 for m in recipe.milestones), "epochs from 1 on"))
    for option, value, ok, rule in checks:
        if not ok:
            raise UserError(f"{option} {value} is out of range: it must be {rule}")
    return recipe


def describe_recipe(recipe: Recipe) -> str:
    """One line saying how a run will train."""
    drops = f", lr x{recipe.gamma:g} at epochs {', '.join(map(str, recipe.milestones))}" if recipe.milestones else ""
    return (f"{recipe.optimizer} lr {recipe.lr:g}, {recipe.epochs} epochs{drops}, batch {recipe.batch_size}, "
            f"weight decay {recipe.weight_decay:g}")


def sdn_ic_weights(epoch: int, epochs: int, final_weights: list[float]) -> list[float]:
    """The paper's growing IC loss weights: tau_i rises linearly from 0.01 to C_i over the epochs."""
    progress = epoch / max(1, epochs - 1)
    return [SDN_TAU_START + (c - SDN_TAU_START) * progress for c in final_weights]


@dataclass
class TrainConfig:
    """Everything a training run needs besides the data and the model spec."""

    mode: str
    recipe: Recipe | None = None  # None: resolved by new_run once the backbone is known
    seed: int = 0
    ic_weights: list[float] = field(default_factory=list)  # C_i for SDN training (set from the exits' costs)
    ic_loss: str = "growing"  # one of shallowdeep.choices.IC_LOSSES
    cache_features: bool = True  # IC-only: train on cached pooled features
    cache_views: int = 5
    cache_budget_gb: float = 4.0
    amp: bool = True  # bf16 autocast on CUDA
    channels_last: bool = True  # on CUDA
    compile: bool = False
