"""What the four backbones share: the stages/head split, argument checks, layers and weight init."""

from __future__ import annotations

import torch
from torch import nn

from shallowdeep.errors import UserError

MIN_INPUT_SIZE = 16  # the side below which the four backbones would pool their maps away
LARGE_INPUT_SIZE = 64  # from this side up, the Tiny ImageNet layout (see the package docstring)


class StagedNet(nn.Module):
    """A classifier split into ``stages`` (one block per element) and a ``head``.

    ``forward(x) == head(stages(x))``, so an exit can sit between any two elements of
    ``stages``. Subclasses call ``super().__init__`` first, then assign ``stages`` and ``head``.
    """

    stages: nn.Sequential
    head: nn.Module

    def __init__(self, num_classes: int, input_size: int, in_channels: int = 3) -> None:
        super().__init__()
        if not _is_int(num_classes) or num_classes < 1:
            raise UserError(f"num_classes must be a positive integer, got {num_classes!r}")
        if not _is_int(input_size) or input_size < MIN_INPUT_SIZE:
            raise UserError(f"input_size must be an integer of at least {MIN_INPUT_SIZE} (the side of square images), "
                            f"got {input_size!r}")
        if not _is_int(in_channels) or in_channels < 1:
            raise UserError(f"in_channels must be a positive integer, got {in_channels!r}")
        self.num_classes = num_classes
        self.input_size = input_size
        self.in_channels = in_channels

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The body: the last feature map."""
        return self.stages(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Logits from the last feature map."""
        return self.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(x))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1, bias: bool = False) -> nn.Sequential:
    """3x3 convolution (padding 1), batch norm, ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=bias),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    )


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal (fan-out) convolutions, BN weight 1, linear weights N(0, 0.01), all biases 0.

    This is the paper code's init for ResNet and VGG, used here for all four backbones (its
    Wide-ResNet keeps PyTorch's default linear weights and conv biases, its MobileNet PyTorch's
    defaults throughout).
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, 0.01)
            nn.init.zeros_(module.bias)
