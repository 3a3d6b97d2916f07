"""Backbones from torchvision and timm by name (``--backbone torchvision:resnet18``), an optional extra:
``pip install 'shallowdeep[vision]'``."""

from __future__ import annotations

import importlib
import warnings
from types import ModuleType
from typing import Any, Mapping

from torch import nn

from .errors import UserError, first_line


def create_library_model(name: str, num_classes: int, kwargs: Mapping[str, Any] | None = None,
                         pretrained: bool = False) -> nn.Module:
    """``torchvision:NAME`` or ``timm:NAME`` with ``num_classes`` outputs and the library's own ``kwargs``;
    ``pretrained`` lets the library fetch its weights (one line when it cannot). Pretrained weights made for
    another number of classes are loaded, and the classifier is then a new one (with a warning)."""
    library, _, model = name.partition(":")
    try:
        module = importlib.import_module(library)
    except ImportError:
        raise UserError(f"--backbone {name} needs {library}: pip install 'shallowdeep[vision]'") from None
    kwargs = {**(kwargs or {}), "num_classes": num_classes}
    try:
        if library == "torchvision":
            return _torchvision_model(module, model, kwargs, pretrained)
        net = module.create_model(model, pretrained=pretrained, **kwargs)
    except OSError as exc:  # no network, or the library's cache is unwritable
        raise UserError(f"{library} could not fetch the weights of {model} ({first_line(exc)}); without network "
                        "access, save them to a file elsewhere and pass --from FILE") from exc
    except (ValueError, RuntimeError, TypeError, KeyError, AssertionError) as exc:
        raise UserError(f"{library} cannot build {model} with {kwargs}: {first_line(exc)}") from exc
    trained_for = getattr(net, "pretrained_cfg", {}).get("num_classes")
    if pretrained and trained_for and trained_for != num_classes:
        warnings.warn(f"timm's weights of {model} classify {trained_for} classes: loaded them all but the "
                      f"classifier, which is new, with {num_classes} outputs")
    return net


def _torchvision_model(torchvision: ModuleType, model: str, kwargs: dict[str, Any], pretrained: bool) -> nn.Module:
    """torchvision's classification model ``model``; with ``pretrained``, its default weights loaded and then, if
    they classify another number of classes, its classifier (every layer of that many outputs) replaced."""
    classifiers = torchvision.models.list_models(module=torchvision.models)
    if model not in classifiers and model in torchvision.models.list_models():
        raise UserError(f"torchvision:{model} is not a classification model (an SDN needs a network answering one "
                        "class per image); torchvision.models.list_models(module=torchvision.models) lists those")
    if not pretrained:
        return torchvision.models.get_model(model, weights=None, **kwargs)
    weights = torchvision.models.get_model_weights(model).DEFAULT
    trained_for = len(weights.meta["categories"])
    net = torchvision.models.get_model(model, weights=weights, **{**kwargs, "num_classes": trained_for})
    if kwargs["num_classes"] != trained_for:
        replaced = _replace_classifier(net, trained_for, kwargs["num_classes"])
        warnings.warn(f"torchvision's weights of {model} classify {trained_for} classes: loaded them, then replaced "
                      f"its classifier ({', '.join(replaced)}) by a new one with {kwargs['num_classes']} outputs")
    return net


def _replace_classifier(net: nn.Module, old: int, new: int) -> list[str]:
    """Replace every linear layer and convolution of ``net`` with ``old`` outputs (the classifier, and auxiliary
    classifiers) by a freshly initialised one with ``new`` outputs; returns their names."""
    replaced = []
    for name, layer in list(net.named_modules()):
        if isinstance(layer, nn.Linear) and layer.out_features == old:
            fresh: nn.Module = nn.Linear(layer.in_features, new, bias=layer.bias is not None)
        elif isinstance(layer, nn.Conv2d) and layer.out_channels == old:
            fresh = nn.Conv2d(layer.in_channels, new, layer.kernel_size, layer.stride, layer.padding,
                              layer.dilation, bias=layer.bias is not None)
        else:
            continue
        net.set_submodule(name, fresh.to(layer.weight.device))
        replaced.append(name)
    if not replaced:
        raise UserError(f"found no classifier with {old} outputs to replace; build it with the library's weights "
                        "yourself (--backbone FILE.py:FUNCTION)")
    return replaced
