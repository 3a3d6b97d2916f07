"""The paper's training recipes as plain values, and the schedules derived from them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

MODES = ("cnn", "ic-only", "sdn")
IC_LOSSES = ("growing", "uniform")  # SDN training: the paper's growing IC weights, or every exit weighted 1
SDN_TAU_START = 0.01


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
    if mode == "ic-only":
        return Recipe("adam", 1e-3, 25, [15], weight_decay=weight_decay)
    if mode in ("cnn", "sdn"):
        return Recipe("sgd", 0.1, 100, [35, 60, 85], weight_decay=weight_decay)
    raise ValueError(f"unknown mode {mode}")


def scale_milestones(recipe: Recipe, epochs: int) -> Recipe:
    """The recipe shortened or stretched to ``epochs``, its milestones moved in proportion."""
    scaled = [max(1, round(m * epochs / recipe.epochs)) for m in recipe.milestones]
    return Recipe(**{**recipe.to_dict(), "epochs": epochs, "milestones": [m for m in scaled if m < epochs]})


def sdn_ic_weights(epoch: int, epochs: int, final_weights: list[float]) -> list[float]:
    """The paper's growing IC loss weights: tau_i rises linearly from 0.01 to C_i over the epochs."""
    progress = epoch / max(1, epochs - 1)
    return [SDN_TAU_START + (c - SDN_TAU_START) * progress for c in final_weights]


@dataclass
class TrainConfig:
    """Everything a training run needs besides the data and the model spec."""

    mode: str
    recipe: Recipe
    seed: int = 0
    ic_weights: list[float] = field(default_factory=list)  # C_i for SDN training
    ic_loss: str = "growing"  # one of IC_LOSSES
    cache_features: bool = True  # IC-only: train on cached pooled features
    cache_views: int = 5
    cache_budget_gb: float = 4.0
    amp: bool = True  # bf16 autocast on CUDA
    channels_last: bool = True  # on CUDA
    compile: bool = False
