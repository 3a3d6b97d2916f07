"""Training runs: the plain CNN, IC-only (frozen backbone) and SDN training, resumable."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable

import torch

from ..build import build_sdn, extract_state_dict, load_checkpoint_file
from ..data import Splits, load_dataset
from ..errors import UserError
from ..io import atomic_write_json
from ..run import CHECKPOINT, CONFIG, open_run
from ..sdn import SDN
from .distributed import DistInfo
from .ic_cache import fits_in_budget, train_ics_cached
from .recipe import IC_LOSSES, MODES, Recipe, TrainConfig, default_recipe, scale_milestones
from .trainer import Interrupted, Progress, train

__all__ = ["IC_LOSSES", "MODES", "Interrupted", "Recipe", "TrainConfig", "config_from_dict", "config_to_dict",
           "default_recipe", "new_run", "resume_run", "load_pretrained", "scale_milestones"]


def load_pretrained(source: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Backbone weights from a run folder or a weights file, and the run's model spec if it is a run."""
    source = Path(source)
    if source.is_dir():
        run = open_run(source)
        return extract_state_dict(run.load_checkpoint(), f"run {source}"), dict(run.config["model"], _dir=str(source))
    return extract_state_dict(load_checkpoint_file(source), f"weights {source}"), None


def new_run(run_dir: Path, data: dict[str, Any], model: dict[str, Any], cfg: TrainConfig, *,
            pretrained: str | None = None, device: torch.device, dist: DistInfo | None = None,
            progress: Progress | None = None, on_epoch: Callable[[dict], None] | None = None,
            splits: Splits | None = None, extra_config: dict[str, Any] | None = None) -> list[dict]:
    """Start a run in ``run_dir`` (which must not hold one yet) and train it.

    ``model`` is a model spec (see :mod:`shallowdeep.build`) without ``num_classes`` and
    ``input_shape``, which come from the data set; a ``factory`` file is copied into the run.
    ``splits`` replaces the data ``data`` describes (e.g. a poisoned copy); ``extra_config`` is
    recorded in the run's config beside the rest (e.g. how the data was poisoned).
    """
    dist = dist or DistInfo()
    if (run_dir / CONFIG).exists() or (run_dir / CHECKPOINT).exists():
        raise UserError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")
    if cfg.mode in ("ic-only",) and pretrained is None:
        raise UserError("IC-only training needs a trained backbone: pass --from RUN_OR_WEIGHTS")
    splits = splits or load_dataset(**data)
    model = {**model, "num_classes": splits.spec.num_classes, "input_shape": [3, splits.spec.input_size, splits.spec.input_size]}
    if cfg.mode == "cnn":
        model["exits"] = []
    state = None
    if pretrained is not None:
        state, source_spec = load_pretrained(pretrained)
        if "arch" not in model and "factory" not in model and source_spec is not None:
            model = _backbone_of(source_spec) | model
    if "arch" not in model and "factory" not in model:
        raise UserError("say which backbone to train: --arch NAME, --backbone FILE.py:FUNCTION, or --from RUN")
    torch.manual_seed(cfg.seed)  # the initial weights, ICs included
    net = build_sdn(model, ".", state, f"weights from {pretrained}")
    if cfg.mode == "sdn" and not cfg.ic_weights:
        cfg.ic_weights = [round(f / net.backbone_flops, 4) for f in net.exit_flops[:-1]]
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        spec = dict(net.spec)
        if "factory" in spec:
            path, _, name = spec["factory"].rpartition(":")
            shutil.copyfile(path, run_dir / "backbone.py")
            spec["factory"] = f"backbone.py:{name}"
        atomic_write_json(run_dir / CONFIG, {"data": data, "model": spec, "train": config_to_dict(cfg),
                                             "pretrained": str(pretrained) if pretrained else None,
                                             **(extra_config or {})})
    return _run(run_dir, net, splits, cfg, device, None, dist, progress, on_epoch)


def resume_run(run_dir: Path, *, device: torch.device, dist: DistInfo | None = None,
               progress: Progress | None = None, on_epoch: Callable[[dict], None] | None = None) -> list[dict]:
    """Continue an interrupted run from its last checkpoint, with the settings and data it was
    started with (a poisoned run's poisoning rebuilt from its config)."""
    run = open_run(run_dir)
    ckpt = run.load_checkpoint()
    cfg = config_from_dict(run.config["train"])
    ensemble_pending = "ensemble.bias" in ckpt.get("model", {}) and not ckpt.get("ensemble_trained")
    if int(ckpt.get("epoch", 0)) >= cfg.recipe.epochs and not ensemble_pending:
        raise UserError(f"{run_dir} has finished all {cfg.recipe.epochs} epochs; nothing to resume")
    if run.config.get("poison"):
        from ..backdoor import poisoned_run_data

        splits = poisoned_run_data(run)[0]
    else:
        splits = load_dataset(**run.config["data"])
    net = build_sdn(run.config["model"], run_dir)
    return _run(run_dir, net, splits, cfg, device, ckpt, dist or DistInfo(), progress, on_epoch)


def _run(run_dir: Path, net: SDN, splits: Splits, cfg: TrainConfig, device: torch.device,
         ckpt: dict | None, dist: DistInfo, progress: Progress | None, on_epoch) -> list[dict]:
    cached = cfg.mode == "ic-only" and cfg.cache_features and dist.world_size == 1
    if cached and fits_in_budget(net, splits, cfg, torch.float16):
        return train_ics_cached(run_dir, net, splits, cfg, device, resume_from=ckpt, progress=progress,
                                on_epoch=on_epoch)
    return train(run_dir, net, splits, cfg, device, resume_from=ckpt, dist=dist, progress=progress, on_epoch=on_epoch)


def _backbone_of(spec: dict[str, Any]) -> dict[str, Any]:
    """The backbone part of another run's model spec, its factory file resolved against that run."""
    if "arch" in spec:
        return {"arch": spec["arch"]}
    path, _, name = spec["factory"].rpartition(":")
    return {"factory": f"{Path(spec['_dir'], path)}:{name}"}


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """A training configuration as plain values (the ``train`` section of a run's config)."""
    return {**{k: v for k, v in vars(cfg).items() if k != "recipe"}, "recipe": cfg.recipe.to_dict()}


def config_from_dict(d: dict[str, Any]) -> TrainConfig:
    """The inverse of :func:`config_to_dict`; a one-line error for a damaged section."""
    try:
        return TrainConfig(**{**d, "recipe": Recipe(**d["recipe"])})
    except (KeyError, TypeError) as exc:
        raise UserError(f"the 'train' section of {CONFIG} is damaged ({exc})") from exc
