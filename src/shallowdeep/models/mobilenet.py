"""MobileNet v1 for small images (Howard et al. 2017), as in the Shallow-Deep Networks code.

Stem 3x3 conv (32 channels, stride 1 at every input size) + BN + ReLU, then 13
depthwise-separable blocks (3x3 depthwise conv + BN + ReLU, 1x1 pointwise conv + BN + ReLU)
following ``BLOCKS``, global average pooling and a linear layer from 1024 features. Four
blocks have stride 2, so the last map is 1x1, 2x2 or 4x4 for 16x16, 32x32 or 64x64 inputs (side / 16,
rounded up).
"""

from __future__ import annotations

from torch import nn

from .base import StagedNet, conv_bn_relu, init_weights
from .registry import register

STEM_CHANNELS = 32
# (output channels, stride) of each depthwise-separable block.
BLOCKS = [
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
]  # fmt: skip


def depthwise_separable(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """3x3 depthwise conv + BN + ReLU, then 1x1 pointwise conv + BN + ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, in_channels, 3, stride=stride, padding=1, groups=in_channels, bias=False),
        nn.BatchNorm2d(in_channels),
        nn.ReLU(),
        nn.Conv2d(in_channels, out_channels, 1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    )


class MobileNet(StagedNet):
    """MobileNet v1: ``stages`` = [stem, 13 depthwise-separable blocks]."""

    def __init__(self, num_classes: int, input_size: int = 32, in_channels: int = 3) -> None:
        super().__init__(num_classes, input_size, in_channels)
        blocks: list[nn.Module] = [conv_bn_relu(in_channels, STEM_CHANNELS)]
        in_channels = STEM_CHANNELS
        for out_channels, stride in BLOCKS:
            blocks.append(depthwise_separable(in_channels, out_channels, stride))
            in_channels = out_channels
        self.stages = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_channels, num_classes))
        init_weights(self)


@register("mobilenet", weight_decay=1e-4)
def mobilenet(num_classes: int, input_size: int = 32, in_channels: int = 3) -> MobileNet:
    """MobileNet v1 (CIFAR layout) for ``in_channels`` x ``input_size`` x ``input_size`` images."""
    return MobileNet(num_classes, input_size, in_channels)
