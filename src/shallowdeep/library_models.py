"""Backbones from torchvision and timm by name (``--backbone torchvision:resnet18``), an optional extra:
``pip install 'shallowdeep[vision]'``."""

from __future__ import annotations

import importlib
from typing import Any, Mapping

from torch import nn

from .errors import UserError, first_line


def create_library_model(name: str, num_classes: int, kwargs: Mapping[str, Any] | None = None,
                         pretrained: bool = False) -> nn.Module:
    """``torchvision:NAME`` or ``timm:NAME`` with ``num_classes`` outputs and the library's own ``kwargs``;
    ``pretrained`` lets the library fetch its weights (one line when it cannot)."""
    library, _, model = name.partition(":")
    try:
        module = importlib.import_module(library)
    except ImportError:
        raise UserError(f"--backbone {name} needs {library}: pip install 'shallowdeep[vision]'") from None
    kwargs = {**(kwargs or {}), "num_classes": num_classes}
    try:
        if library == "torchvision":
            return module.models.get_model(model, weights="DEFAULT" if pretrained else None, **kwargs)
        return module.create_model(model, pretrained=pretrained, **kwargs)
    except OSError as exc:  # no network, or the library's cache is unwritable
        raise UserError(f"{library} could not fetch the weights of {model} ({first_line(exc)}); without network "
                        "access, save them to a file elsewhere and pass --from FILE") from exc
    except (ValueError, RuntimeError, TypeError, KeyError, AssertionError) as exc:
        raise UserError(f"{library} cannot build {model} with {kwargs}: {first_line(exc)}") from exc
