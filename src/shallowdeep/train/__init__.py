"""Training runs: the plain CNN, IC-only (frozen backbone) and SDN training, resumable."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from .. import models
from ..build import build_sdn, extract_state_dict, load_checkpoint_file
from ..choices import IC_LOSSES, MODES
from ..data import Splits, load_dataset
from ..data.fingerprint import check_same_task, data_record
from ..errors import SettingError, UserError
from ..model_spec import ModelSpec
from ..outputs import load_training_data
from ..run import CONFIG, check_new_run_folder, create_run, open_run, run_lock
from ..sdn import SDN
from .data_settings import DataSettings
from .distributed import DistInfo
from .ic_cache import fits_in_budget
from .recipe import USER_BACKBONE_WEIGHT_DECAY, Recipe, TrainConfig, default_recipe, describe_recipe, resolve_recipe
from .sources import CachedMaps, LoaderBatches, StreamedImages
from .summary import start_summary
from .trainer import Interrupted, Progress, train

__all__ = ["IC_LOSSES", "MODES", "DataSettings", "Hooks", "Interrupted", "PreparedRun", "Recipe", "TrainConfig",
           "config_from_dict", "config_to_dict", "default_recipe", "describe_recipe", "load_pretrained", "new_run",
           "paper_weight_decay", "resolve_backbone", "resolve_recipe", "resume_run"]


def load_pretrained(source: str | Path) -> tuple[dict[str, torch.Tensor], ModelSpec | None]:
    """Backbone weights from a run folder or a weights file, and the run's model spec if it is a run."""
    source = Path(source)
    if source.is_dir():
        run = open_run(source)
        return extract_state_dict(run.load_checkpoint(), f"run {source}"), run.model
    return extract_state_dict(load_checkpoint_file(source), f"weights {source}"), None


def resolve_backbone(model: ModelSpec, pretrained: str | Path | None
                     ) -> tuple[ModelSpec, dict[str, torch.Tensor] | None]:
    """``model`` with a backbone (its own, or else the one of the run ``pretrained`` names) and the
    weights to start from (None: freshly initialised)."""
    state = None
    if pretrained is not None:
        state, source_spec = load_pretrained(pretrained)
        if not model.has_backbone and source_spec is not None:
            model = model.with_backbone_of(source_spec)
    if not model.has_backbone:
        raise SettingError("say which backbone to train: a built-in architecture, your own or a library's backbone, "
                           "or the run whose backbone to take", "arch", "backbone", "pretrained")
    return model, state


def paper_weight_decay(model: ModelSpec) -> float:
    """The paper's weight decay for ``model``'s backbone (5e-4 VGG and WRN, 1e-4 others and users' own)."""
    return models.default_weight_decay(model.arch) if model.arch else USER_BACKBONE_WEIGHT_DECAY


@dataclass
class Hooks:
    """What a run reports while it trains: ``progress`` wraps each epoch's batches, ``on_start`` receives a
    summary of the run (data, exits, recipe, device) before the first batch, ``on_epoch`` each epoch's metrics."""

    progress: Progress | None = None
    on_start: Callable[[list[str]], None] | None = None
    on_epoch: Callable[[dict], None] | None = None


@dataclass
class PreparedRun:
    """A run ready to train: its network, data and settings; ``sections`` is what a new run's config records
    (written when it is fitted), None for a run being resumed from ``checkpoint``."""

    run_dir: Path
    net: SDN
    splits: Splits
    cfg: TrainConfig
    sections: dict[str, Any] | None = None
    checkpoint: dict[str, Any] | None = None

    @classmethod
    def new(cls, run_dir: Path, data: dict[str, Any], model: ModelSpec, cfg: TrainConfig, *,
            recipe_changes: Mapping[str, Any] | None = None, pretrained: str | Path | None = None,
            splits: Splits | None = None, extra_config: dict[str, Any] | None = None,
            library_weights: bool = False) -> PreparedRun:
        """A new run (see :func:`new_run`): the backbone resolved, the recipe chosen, the data read and the network
        built, nothing written yet."""
        if cfg.mode != "cnn" and model.exits == ():
            raise SettingError(f"mode {cfg.mode} trains internal classifiers, but no exit is given for one "
                               "(exits=())", "mode", "exits")
        if cfg.mode == "ic-only" and pretrained is None and not library_weights:
            raise SettingError("IC-only training needs a trained backbone: give its weights (a run folder or a "
                               "weights file), or take the library's pretrained ones", "pretrained", "library_weights")
        if data.get("data_dir"):  # recorded in full: later commands may run in any folder
            data = {**data, "data_dir": str(Path(data["data_dir"]).expanduser().resolve())}
        model, state = resolve_backbone(model, pretrained)
        decay, changes = paper_weight_decay(model), recipe_changes or {}
        recipe = cfg.recipe or resolve_recipe(cfg.mode, decay, changes)  # a bad recipe refused before the data
        splits = splits or load_dataset(**data)
        if cfg.recipe is None and recipe.schedule == "short":  # its batch follows the data's size
            recipe = resolve_recipe(cfg.mode, decay, changes, len(splits.train))
        cfg = replace(cfg, recipe=recipe)
        _check_channels(pretrained, splits.spec.input_shape)
        model = model.with_data(splits.spec.num_classes, splits.spec.input_shape)
        if cfg.mode == "cnn":
            model = replace(model, exits=())
        torch.manual_seed(cfg.seed)  # the initial weights, ICs included
        net = build_sdn(model, state, f"weights from {pretrained}", library_weights)
        if cfg.mode != "cnn" and not len(net.ics):
            raise SettingError(f"mode {cfg.mode} trains internal classifiers, but the network has none", "mode")
        if cfg.mode == "sdn" and not cfg.ic_weights:
            cfg = replace(cfg, ic_weights=[round(f / net.backbone_flops, 4) for f in net.exit_flops[:-1]])
        sections = {"data": data, "data_record": data_record(splits), "train": config_to_dict(cfg),
                    "pretrained": str(pretrained) if pretrained else None, **(extra_config or {})}
        return cls(Path(run_dir), net, splits, cfg, sections)

    @classmethod
    def resume(cls, run_dir: Path, splits: Splits | None = None, data_dir: str | Path | None = None,
               cache_dir: str | Path | None = None) -> PreparedRun:
        """The interrupted run in ``run_dir`` at its last checkpoint, with the settings it was started with, on
        ``splits`` (default: the data its config records, poisoning included, read from ``data_dir`` when it
        moved and cached in ``cache_dir``)."""
        run = open_run(run_dir)
        if run.config.get("trained_from") == LoaderBatches.TRAINED_FROM:
            raise UserError(f"{run_dir} was trained from Python on your own loader (train_sdn); the command line "
                            "cannot continue it")
        ckpt = run.load_checkpoint()
        cfg = config_from_dict(run.config.get("train"))
        ensemble_pending = "ensemble.bias" in ckpt.get("model", {}) and not ckpt.get("ensemble_trained")
        if int(ckpt.get("epoch", 0)) >= cfg.recipe.epochs and not ensemble_pending:
            raise UserError(f"{run_dir} has finished all {cfg.recipe.epochs} epochs; nothing to resume")
        splits = splits or load_training_data(run, data_dir, cache_dir)
        check_same_task(run.config.get("data_record"), splits, f"run {run_dir}")
        return cls(Path(run_dir), build_sdn(run.model), splits, cfg, checkpoint=ckpt)

    def fit(self, device: torch.device, dist: DistInfo | None = None, hooks: Hooks | None = None) -> list[dict]:
        """Train the run (a new run's config written first, by the main process), checkpointing every epoch;
        returns the metrics of every epoch."""
        dist, hooks = dist or DistInfo(), hooks or Hooks()
        if self.sections is not None and dist.is_main:
            self.net.spec = create_run(self.run_dir, self.net.spec, self.sections)
        cfg = self.cfg
        cached = cfg.mode == "ic-only" and cfg.cache_features and dist.world_size == 1
        cached = cached and fits_in_budget(self.net, self.splits, cfg, torch.float16)
        source = CachedMaps(self.splits) if cached else StreamedImages(self.splits)
        if hooks.on_start is not None and dist.is_main:
            described = (f"the ICs' inputs cached in memory ({cfg.cache_views} augmented views, fp16)" if cached
                         else "images streamed through the network")
            ckpt = self.checkpoint
            resumed_at = (int(ckpt.get("epoch", 0)), int(ckpt.get("step", 0))) if ckpt else None
            hooks.on_start(start_summary(self.net, self.splits, cfg, device, described, resumed_at))
        return train(self.run_dir, self.net, source, cfg, device, resume_from=self.checkpoint, dist=dist,
                     progress=hooks.progress, on_epoch=hooks.on_epoch)


def new_run(run_dir: Path, data: dict[str, Any], model: ModelSpec, cfg: TrainConfig, *,
            recipe_changes: Mapping[str, Any] | None = None, pretrained: str | None = None,
            device: torch.device, dist: DistInfo | None = None, progress: Progress | None = None,
            on_start: Callable[[list[str]], None] | None = None, on_epoch: Callable[[dict], None] | None = None,
            splits: Splits | None = None, extra_config: dict[str, Any] | None = None,
            require_empty: bool = True, library_weights: bool = False) -> list[dict]:
    """Start a run in ``run_dir`` (which must not hold one yet) and train it: a :class:`PreparedRun`, fitted.

    ``model`` needs no class count or input shape: they come from the data set. Without a backbone,
    it takes the one of the run ``pretrained`` names. When ``cfg.recipe`` is None, the recipe is the
    paper's for the mode and backbone with ``recipe_changes`` (see :func:`resolve_recipe`);
    ``on_start`` receives a summary of the run (data, exits, recipe, device) before the first batch.
    ``data``: the keyword arguments of ``load_dataset`` (see :meth:`DataSettings.options`). ``splits`` replaces the
    data ``data`` describes (e.g. a poisoned copy); ``extra_config`` is recorded in the run's config beside the rest (e.g. how the data was poisoned). The folder is held by this process until
    training ends; it must be new or empty unless ``require_empty`` is False (a study's own folder).
    ``library_weights``: a torchvision or timm backbone starts from the library's pretrained weights.
    """
    dist = dist or DistInfo()
    with run_lock(run_dir) if dist.is_main else nullcontext():
        check_new_run_folder(run_dir, require_empty)
        prepared = PreparedRun.new(run_dir, data, model, cfg, recipe_changes=recipe_changes, pretrained=pretrained,
                                   splits=splits, extra_config=extra_config, library_weights=library_weights)
        return prepared.fit(device, dist, Hooks(progress, on_start, on_epoch))


def _check_channels(pretrained: str | Path | None, data_shape: tuple[int, ...]) -> None:
    """A one-line error when the run ``pretrained`` names took images of another channel count than the data's."""
    if pretrained is None or not Path(pretrained).is_dir():
        return
    shape = open_run(pretrained).config["model"].get("input_shape")
    if shape and shape[0] != data_shape[0]:
        raise SettingError(f"run {pretrained} takes {'x'.join(map(str, shape))} images but the data's are "
                           f"{'x'.join(map(str, data_shape))}; read the data as {shape[0]}-channel images", "channels")


def resume_run(run_dir: Path, splits: Splits | None = None, *, device: torch.device, dist: DistInfo | None = None,
               progress: Progress | None = None, on_start: Callable[[list[str]], None] | None = None,
               on_epoch: Callable[[dict], None] | None = None, data_dir: str | Path | None = None,
               cache_dir: str | Path | None = None) -> list[dict]:
    """Continue an interrupted run from its last checkpoint (see :meth:`PreparedRun.resume`)."""
    prepared = PreparedRun.resume(run_dir, splits, data_dir, cache_dir)
    dist = dist or DistInfo()
    with run_lock(run_dir) if dist.is_main else nullcontext():
        return prepared.fit(device, dist, Hooks(progress, on_start, on_epoch))


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """A training configuration as plain values (the ``train`` section of a run's config)."""
    return {**{k: v for k, v in vars(cfg).items() if k != "recipe"}, "recipe": cfg.recipe.to_dict()}


def config_from_dict(d: dict[str, Any] | None) -> TrainConfig:
    """The inverse of :func:`config_to_dict`; a one-line error for a missing or damaged section."""
    if not isinstance(d, dict):
        raise UserError(f"the 'train' section of {CONFIG} is missing or damaged; the run cannot be resumed")
    try:
        return TrainConfig(**{**d, "recipe": Recipe(**d["recipe"])})
    except (KeyError, TypeError) as exc:
        raise UserError(f"the 'train' section of {CONFIG} is damaged ({exc})") from exc
