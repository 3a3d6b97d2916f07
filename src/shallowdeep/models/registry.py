"""Backbones by name, filled by the ``@register`` decorator in each model file (as in timm)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from shallowdeep.errors import UserError

Builder = Callable[[int, int, int], nn.Module]


@dataclass(frozen=True)
class _Entry:
    builder: Builder
    weight_decay: float


_REGISTRY: dict[str, _Entry] = {}


def register(name: str, weight_decay: float) -> Callable[[Builder], Builder]:
    """Decorator: make ``builder(num_classes, input_size, in_channels)`` available as ``create(name, ...)``."""

    def decorator(builder: Builder) -> Builder:
        _REGISTRY[name] = _Entry(builder, weight_decay)
        return builder

    return decorator


def available() -> list[str]:
    """Names accepted by :func:`create`, sorted."""
    return sorted(_REGISTRY)


def create(name: str, num_classes: int, input_size: int = 32, in_channels: int = 3) -> nn.Module:
    """A freshly initialised backbone for square ``in_channels`` x ``input_size`` x ``input_size`` images (any side
    of at least 16); ``UserError`` for an unknown name, class count, input size or channel count."""
    return _entry(name).builder(num_classes, input_size, in_channels)


def default_weight_decay(name: str) -> float:
    """The paper's weight decay for this backbone (5e-4 for VGG and Wide-ResNet, 1e-4 otherwise)."""
    return _entry(name).weight_decay


def _entry(name: str) -> _Entry:
    if name not in _REGISTRY:
        raise UserError(f"unknown model {name!r}; choose one of: {', '.join(available())}")
    return _REGISTRY[name]
