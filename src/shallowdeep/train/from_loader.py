"""Training an SDN from Python on a user's ``DataLoader``: :func:`train_sdn`."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch

from ..build import build_sdn
from ..choices import IC_LOSSES
from ..data import load_dataset
from ..data.fingerprint import data_record
from ..errors import UserError
from ..model_spec import ModelSpec
from ..run import check_new_run_folder, create_run, run_lock
from ..sdn import SDN
from . import config_to_dict, paper_weight_decay
from .recipe import USER_BACKBONE_WEIGHT_DECAY, TrainConfig, resolve_recipe
from .sources import LoaderBatches, checked_batch
from .trainer import train


def train_sdn(net: SDN, train_loader: Iterable, *, mode: str = "ic-only", epochs: int | None = None,
              val_loader: Iterable | None = None, out: str | Path | None = None, schedule: str | None = None,
              lr: float | None = None, weight_decay: float | None = None, momentum: float | None = None,
              milestones: Sequence[int] | None = None, optimizer: str | None = None, ic_loss: str = TrainConfig.ic_loss,
              seed: int = TrainConfig.seed, device: str | torch.device | None = None, spec: ModelSpec | None = None,
              data: Mapping[str, Any] | None = None, classes: Sequence[str] | None = None,
              mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
              on_epoch: Callable[[dict[str, Any]], None] | None = None) -> tuple[SDN, list[dict[str, Any]]]:
    """Train ``net`` (an SDN from :func:`shallowdeep.attach`) on the ``(images, labels)`` batches of
    ``train_loader``, taken as they come (augmented and normalised by your pipeline), with the training loop
    of ``shallowdeep train``. Returns the SDN in eval mode and the metrics of every epoch.

    ``mode``: "ic-only" trains the ICs alone, the backbone frozen (its parameters stop requiring gradients);
    "sdn" trains the whole network, the ICs' loss weights growing as in the paper (``ic_loss="uniform"``: all 1).
    The recipe is the paper's for the mode, or the short one when ``epochs`` are well below the paper's (see
    ``shallowdeep train --help``); ``schedule`` ("paper" or "short") and the other recipe arguments override
    it. ``val_loader``: every exit's accuracy on it after each epoch (``holdout_acc`` in the metrics).
    ``device``: default, where ``net`` is.

    ``out``: a new run folder to write (config, a checkpoint after every epoch, metrics), which
    :func:`shallowdeep.load` and ``open_run`` read. It needs ``spec`` (how to build the network again, e.g.
    ``ModelSpec(library="torchvision:resnet18", model_kwargs={"num_classes": 10})``; not needed for an SDN that
    ``build_sdn`` or ``open_run(...).load_net()`` made). ``data``: the data set as ``shallowdeep.data.load_dataset``
    takes it (e.g. ``{"name": "imagefolder", "data_dir": "my-images/", "normalization": "imagenet"}``), read the
    way your loader's images are normalised, so that ``evaluate``, ``early-exit`` and ``report`` run on the folder;
    without it, ``classes``, ``mean`` and ``std`` (those of your normalisation) are recorded for ``load``.
    """
    if not isinstance(net, SDN):
        raise UserError(f"train_sdn trains an SDN, not a {type(net).__name__}: make one with shallowdeep.attach")
    if mode not in ("ic-only", "sdn"):
        raise UserError(f"unknown mode '{mode}': choose ic-only or sdn")
    if not len(net.ics):
        raise UserError(f"mode {mode} trains internal classifiers, but the network has none")
    if ic_loss not in IC_LOSSES:
        raise UserError(f"unknown ic_loss '{ic_loss}': choose {' or '.join(IC_LOSSES)}")
    device = torch.device(device) if device is not None else next(net.parameters()).device
    x, _ = first_batch(train_loader, net.ics[0].linear.out_features)
    model = full_spec(net, spec, x.shape[1:]) if out is not None else spec or net.spec
    changes = {"schedule": schedule, "epochs": epochs, "lr": lr, "weight_decay": weight_decay, "momentum": momentum,
               "milestones": list(milestones) if milestones is not None else None, "optimizer": optimizer,
               "batch_size": getattr(train_loader, "batch_size", None) or len(x)}
    decay = paper_weight_decay(model) if model is not None and model.has_backbone else USER_BACKBONE_WEIGHT_DECAY
    cfg = TrainConfig(mode, resolve_recipe(mode, decay, changes), seed=seed, ic_loss=ic_loss)
    if mode == "sdn":
        cfg = replace(cfg, ic_weights=[round(f / net.backbone_flops, 4) for f in net.exit_flops[:-1]])
    source = LoaderBatches(train_loader, val_loader)
    if out is None:
        metrics = train(None, net, source, cfg, device, on_epoch=on_epoch)
        return net.eval(), metrics
    out = Path(out)
    with run_lock(out):
        check_new_run_folder(out)
        record = loader_record(model, data, classes, mean, std)
        described = dict(data or {})
        if described.get("data_dir"):  # recorded in full: later commands may run in any folder
            described["data_dir"] = str(Path(described["data_dir"]).expanduser().resolve())
        sections = {"data": described, "data_record": record, "train": config_to_dict(cfg), "pretrained": None,
                    "trained_from": LoaderBatches.TRAINED_FROM}
        net.spec = create_run(out, model, sections)
        metrics = train(out, net, source, cfg, device, on_epoch=on_epoch)
    return net.eval(), metrics


def first_batch(loader: Iterable, classes: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``(images, labels)`` batch of ``loader``, checked (see :func:`checked_batch`)."""
    try:
        batch = next(iter(loader))
    except StopIteration:
        raise UserError("the training loader gives no batch") from None
    return checked_batch(batch, classes)


def full_spec(net: SDN, spec: ModelSpec | None, input_shape: Sequence[int]) -> ModelSpec:
    """How a run builds ``net`` again: ``spec`` (or ``net.spec``) with ``net``'s classes, input shape, exits and
    IC design, and what attaching found (its ``analysis``, kept in the run); a one-line error unless what it builds has
    ``net``'s parameters and buffers."""
    spec = spec or net.spec
    if spec is None or not spec.has_backbone:
        raise UserError("out= needs spec=ModelSpec(...) saying how to build the backbone again, e.g. "
                        "ModelSpec(library='torchvision:resnet18', model_kwargs={'num_classes': 10})")
    spec = replace(spec, num_classes=net.ics[0].linear.out_features, input_shape=tuple(input_shape),
                   exits=tuple(net.exit_names), ic=net.ic_design)
    built = build_sdn(spec)
    rebuilt, ours = built.state_dict(), net.state_dict()
    if {k: v.shape for k, v in rebuilt.items()} != {k: v.shape for k, v in ours.items()}:
        missing = sorted(set(ours) ^ set(rebuilt)) or [k for k in ours if ours[k].shape != rebuilt[k].shape]
        raise UserError(f"the spec does not build this network again (it differs at {', '.join(missing[:3])}); "
                        "give the spec of the model you attached")
    return built.spec


def loader_record(model: ModelSpec, data: Mapping[str, Any] | None, classes: Sequence[str] | None,
                  mean: Sequence[float] | None, std: Sequence[float] | None) -> dict[str, Any]:
    """What the run records about its data: that of the data set ``data`` describes (whose normalisation must be
    ``mean`` and ``std`` when they are given), else ``classes`` (default: the class numbers), ``mean`` and ``std``."""
    if data is not None:
        try:
            named = data_record(load_dataset(**data))
        except TypeError as exc:
            raise UserError(f"data= takes the arguments of shallowdeep.data.load_dataset ({exc})") from None
        if len(named["classes"]) != model.num_classes or tuple(named["input_shape"]) != model.input_shape:
            raise UserError(f"the data set {data.get('name')} has {len(named['classes'])} classes of "
                            f"{'x'.join(map(str, named['input_shape']))} images, but the network takes "
                            f"{model.num_classes} classes of {'x'.join(map(str, model.input_shape))}")
        for name, given in (("mean", mean), ("std", std)):
            if given is not None and (len(given) != len(named[name]) or
                                      any(abs(a - b) > 1e-3 for a, b in zip(given, named[name]))):
                raise UserError(f"the data set is normalised with {name} {named[name]}, not {list(given)}; "
                                "the run's commands would read it otherwise than your loader")
        return named
    classes = list(classes) if classes is not None else [str(i) for i in range(model.num_classes)]
    if len(classes) != model.num_classes:
        raise UserError(f"{len(classes)} class names for a network of {model.num_classes} classes")
    record: dict[str, Any] = {"classes": classes, "input_shape": list(model.input_shape)}
    channels = model.input_shape[0]
    for name, given in (("mean", mean), ("std", std)):
        if given is not None:
            if len(given) != channels:
                raise UserError(f"{name} needs one value per channel ({channels}), got {list(given)}")
            record[name] = [float(v) for v in given]
    return record
