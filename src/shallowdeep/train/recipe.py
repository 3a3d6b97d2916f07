"""The training recipes as plain values: the paper's, and a short one for runs of a few epochs (chosen by
itself when the epochs are well below the paper's, its batch by the run's length), with the learning rate of every
batch they give."""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

from ..choices import (CACHE_VIEWS, PAPER_RECIPES, SCHEDULES, SHORT_BATCH_SIZES, SHORT_BELOW, SHORT_MIN_STEPS,
                       SHORT_RECIPES)
from ..errors import SettingError

SDN_TAU_START = 0.01
USER_BACKBONE_WEIGHT_DECAY = 1e-4  # for a backbone the registry does not know


@dataclass
class Recipe:
    """Optimiser and schedule of one training run. ``schedule`` "paper": the rate is multiplied by ``gamma`` at
    each milestone; "short": it rises linearly over the first ``warmup`` of all batches, then falls linearly to
    zero, batch by batch. ``note`` says why the schedule was chosen or how it was adjusted."""

    optimizer: str  # "sgd" or "adam"
    lr: float
    epochs: int
    milestones: list[int]  # epochs at which the learning rate is multiplied by ``gamma``
    gamma: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    batch_size: int = 128
    schedule: str = "paper"  # one of shallowdeep.choices.SCHEDULES
    warmup: float = 0.0  # short schedule: share of all batches the learning rate rises over
    label_smoothing: float = 0.0
    nesterov: bool = False  # SGD only
    note: str = ""

    def lr_at(self, epoch: int, step: int = 0, steps: int = 1) -> float:
        """Learning rate at batch ``step`` of the ``steps`` of ``epoch`` (both 0-based)."""
        if self.schedule == "paper":
            return self.lr * self.gamma ** sum(epoch >= m for m in self.milestones)
        total, done = self.epochs * steps, epoch * steps + step
        warm = round(self.warmup * total)
        if done < warm:
            return self.lr * (done + 1) / warm
        return self.lr * (total - done) / (total - warm)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_recipe(mode: str, weight_decay: float, schedule: str = "paper") -> Recipe:
    """The recipe of ``schedule`` for ``mode`` over the paper's epochs; ``weight_decay`` is the backbone's (5e-4
    VGG/WRN, 1e-4 ResNet/MobileNet), unless the short recipe sets its own."""
    if mode not in PAPER_RECIPES:
        raise ValueError(f"unknown mode {mode}")
    paper = PAPER_RECIPES[mode]
    recipe = {**paper, "milestones": list(paper["milestones"]), "weight_decay": weight_decay}
    if schedule == "short":
        recipe = {**recipe, "milestones": [], "schedule": "short", **SHORT_RECIPES[mode]}
    return Recipe(**recipe)


def scale_milestones(recipe: Recipe, epochs: int) -> Recipe:
    """The recipe shortened or stretched to ``epochs``, its milestones moved in proportion; milestones that
    fall together or on the last epoch are dropped, with a warning and a note saying which are left."""
    scaled = sorted(m for m in {max(1, round(m * epochs / recipe.epochs)) for m in recipe.milestones} if m < epochs)
    note = recipe.note
    if len(scaled) < len(recipe.milestones):
        left = f"lr x{recipe.gamma:g} at epoch{'s' if len(scaled) > 1 else ''} {', '.join(map(str, scaled))}" \
            if scaled else "no drop of the learning rate"
        adjusted = (f"the paper's milestones ({', '.join(map(str, recipe.milestones))} of {recipe.epochs} epochs) "
                    f"do not fit apart into {epochs} epoch{'s' if epochs > 1 else ''}: {left}")
        warnings.warn(adjusted, stacklevel=3)
        note = f"{note}; {adjusted}" if note else adjusted
    return Recipe(**{**recipe.to_dict(), "epochs": epochs, "milestones": scaled, "note": note})


def choose_schedule(mode: str, changes: Mapping[str, Any]) -> tuple[str, str]:
    """The schedule of a run and why: the one ``changes`` names, else the short one when its ``epochs`` are
    fewer than :data:`SHORT_BELOW` of the paper's and it names no milestones, else the paper's."""
    paper_epochs = PAPER_RECIPES[mode]["epochs"]
    schedule = changes.get("schedule")
    if schedule is not None:
        if schedule not in SCHEDULES:
            raise SettingError(f"unknown schedule '{schedule}': choose one of {', '.join(SCHEDULES)}", "schedule")
        if schedule == "short" and "milestones" in changes:
            raise SettingError("milestones set the paper schedule's drops; the short schedule has none",
                               "milestones", "schedule")
        return schedule, f"named with --schedule {schedule}"
    epochs = changes.get("epochs", paper_epochs)
    if "milestones" not in changes and epochs < SHORT_BELOW * paper_epochs:
        return "short", f"{epochs} epochs are well below the paper's {paper_epochs}; --schedule paper keeps the paper's"
    return "paper", ""


def short_batch_size(train_images: int, epochs: int) -> tuple[int, str]:
    """The short SGD recipe's batch for ``epochs`` over ``train_images`` (the largest of
    :data:`SHORT_BATCH_SIZES` giving :data:`SHORT_MIN_STEPS` steps, else the smallest), and why."""
    fits = [b for b in SHORT_BATCH_SIZES if epochs * math.ceil(train_images / b) >= SHORT_MIN_STEPS]
    batch = max(fits, default=SHORT_BATCH_SIZES[0])
    sizes = ", ".join(map(str, SHORT_BATCH_SIZES))
    return batch, (f"batch {batch}: the largest of {sizes} giving {SHORT_MIN_STEPS:,} steps or more over "
                   f"{epochs} epoch{'s' if epochs > 1 else ''} of {train_images:,} images" if fits else
                   f"batch {batch}: none of {sizes} gives {SHORT_MIN_STEPS:,} steps over {epochs} "
                   f"epoch{'s' if epochs > 1 else ''} of {train_images:,} images, so the most steps")


def resolve_recipe(mode: str, weight_decay: float, changes: Mapping[str, Any],
                   train_images: int | None = None) -> Recipe:
    """The recipe a run trains with: the paper's or the short one for ``mode`` (see :func:`choose_schedule`)
    with the backbone's ``weight_decay`` and the user's ``changes`` (``epochs`` moves the paper's milestones in
    proportion; any other field of :class:`Recipe` replaces its value). The short ``cnn`` and ``sdn`` recipes take
    their batch from the run's length over ``train_images`` (:func:`short_batch_size`; the smallest batch when
    that is not known). A one-line error names a value out of range."""
    changes = {k: v for k, v in changes.items() if v is not None}
    unknown = set(changes) - {f.name for f in fields(Recipe)}
    if unknown:
        raise ValueError(f"not recipe settings: {sorted(unknown)}")
    if changes.get("epochs", 1) < 1:
        raise SettingError("epochs must be at least 1", "epochs")
    schedule, note = choose_schedule(mode, changes)
    recipe = Recipe(**{**default_recipe(mode, weight_decay, schedule).to_dict(), "note": note})
    if "epochs" in changes:
        recipe = scale_milestones(recipe, changes["epochs"]) if schedule == "paper" and "milestones" not in changes \
            else Recipe(**{**recipe.to_dict(), "epochs": changes["epochs"]})
    if schedule == "short" and mode != "ic-only" and "batch_size" not in changes:
        batch, why = short_batch_size(train_images, recipe.epochs) if train_images else (SHORT_BATCH_SIZES[0], "")
        recipe = Recipe(**{**recipe.to_dict(), "batch_size": batch,
                            "note": "; ".join(filter(None, (recipe.note, why)))})
    recipe = Recipe(**{**recipe.to_dict(), **changes})
    milestones = recipe.milestones
    checks = (("lr", recipe.lr, math.isfinite(recipe.lr) and recipe.lr > 0, "a positive number"),
              ("weight_decay", recipe.weight_decay, math.isfinite(recipe.weight_decay) and recipe.weight_decay >= 0,
               "zero or a positive number"),
              ("momentum", recipe.momentum, 0 <= recipe.momentum < 1, "from 0 up to (not including) 1"),
              ("batch_size", recipe.batch_size, recipe.batch_size >= 1, "at least 1"),
              ("milestones", milestones, all(m >= 1 for m in milestones) and milestones == sorted(set(milestones)),
               "distinct epochs from 1 on, in increasing order"),
              ("warmup", recipe.warmup, 0 <= recipe.warmup < 1, "from 0 up to (not including) 1"),
              ("label_smoothing", recipe.label_smoothing, 0 <= recipe.label_smoothing < 1,
               "from 0 up to (not including) 1"))
    for setting, value, ok, rule in checks:
        if not ok:
            raise SettingError(f"{setting} {value} is out of range: it must be {rule}", setting)
    return recipe


def describe_recipe(recipe: Recipe) -> str:
    """One line saying how a run will train."""
    if recipe.schedule == "short":
        warmup = f"up over the first {100 * recipe.warmup:g} % of the batches, then " if recipe.warmup else ""
        drops = f", short schedule: lr {warmup}down to 0, batch by batch"
    else:
        epochs = f"epoch{'s' if len(recipe.milestones) > 1 else ''} {', '.join(map(str, recipe.milestones))}"
        drops = f", lr x{recipe.gamma:g} at {epochs}" if recipe.milestones else ""
    nesterov = "Nesterov " if recipe.nesterov else ""
    momentum = f", {nesterov}momentum {recipe.momentum:g}" if recipe.optimizer == "sgd" else ""
    smoothing = f", label smoothing {recipe.label_smoothing:g}" if recipe.label_smoothing else ""
    return (f"{recipe.optimizer} lr {recipe.lr:g}{momentum}, {recipe.epochs} epochs{drops}{smoothing}, "
            f"batch {recipe.batch_size}, weight decay {recipe.weight_decay:g}")


def sdn_ic_weights(epoch: int, epochs: int, final_weights: list[float]) -> list[float]:
    """The paper's growing IC loss weights: tau_i rises linearly from 0.01 to C_i over the epochs."""
    progress = epoch / max(1, epochs - 1)
    return [SDN_TAU_START + (c - SDN_TAU_START) * progress for c in final_weights]


@dataclass
class TrainConfig:
    """Everything a training run needs besides the data and the model spec."""

    mode: str
    recipe: Recipe | None = None  # None: resolved by new_run once the backbone and the data are known
    seed: int = 0
    ic_weights: list[float] = field(default_factory=list)  # C_i for SDN training (set from the exits' costs)
    ic_loss: str = "growing"  # one of shallowdeep.choices.IC_LOSSES
    cache_features: bool = True  # IC-only: train on cached pooled features
    cache_views: int = CACHE_VIEWS
    cache_budget_gb: float = 4.0
    amp: bool = True  # bf16 autocast on CUDA
    channels_last: bool = True  # on CUDA
    compile: bool = False
