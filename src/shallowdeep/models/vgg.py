"""VGG-16 with batch norm, as in the Shallow-Deep Networks code.

Thirteen 3x3 convolutions (with bias, then BN and ReLU); a 2x2 max-pool (rounding odd sides down)
ends blocks 2, 4, 7, 10 and 13, except that a pool is left out once the map is 1x1 (16x16 inputs
drop the last one). The head flattens the map (512 features at 16x16 and 32x32, 2x2x512 = 2048 at
64x64) and runs three fully-connected layers: side x side x 512 -> 512 -> 512 -> classes below 64x64,
or side x side x 512 -> 2048 -> 1024 -> classes from 64x64 up,
each hidden layer followed by ReLU and dropout 0.5. (The paper's code omits the ReLU after the
second hidden layer; it is kept here, as in standard VGG. Counts are the same either way.)
"""

from __future__ import annotations

from torch import nn

from .base import LARGE_INPUT_SIZE, StagedNet, conv_bn_relu, init_weights
from .registry import register

CONV_CHANNELS = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
HIDDEN_WIDTHS = (512, 512)  # below 64x64 inputs
LARGE_HIDDEN_WIDTHS = (2048, 1024)  # from 64x64 up


class VGG(StagedNet):
    """VGG-16-BN: ``stages`` holds the 13 conv blocks (pooling folded into the block before it)."""

    def __init__(self, num_classes: int, input_size: int = 32, in_channels: int = 3) -> None:
        super().__init__(num_classes, input_size, in_channels)
        blocks: list[nn.Sequential] = []
        side = input_size
        for item in CONV_CHANNELS:
            if item == "M":
                if side > 1:
                    blocks[-1].append(nn.MaxPool2d(2))
                    side //= 2
            else:
                blocks.append(conv_bn_relu(in_channels, item, bias=True))
                in_channels = item
        self.stages = nn.Sequential(*blocks)
        layers: list[nn.Module] = [nn.Flatten()]
        width = side * side * in_channels
        for hidden in LARGE_HIDDEN_WIDTHS if input_size >= LARGE_INPUT_SIZE else HIDDEN_WIDTHS:
            layers += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(0.5)]
            width = hidden
        layers.append(nn.Linear(width, num_classes))
        self.head = nn.Sequential(*layers)
        init_weights(self)


@register("vgg16_bn", weight_decay=5e-4)
def vgg16_bn(num_classes: int, input_size: int = 32, in_channels: int = 3) -> VGG:
    """VGG-16-BN for ``in_channels`` x ``input_size`` x ``input_size`` images."""
    return VGG(num_classes, input_size, in_channels)
