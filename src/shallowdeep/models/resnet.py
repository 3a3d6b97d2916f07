"""ResNet-56 for small images (He et al. 2016), as in the Shallow-Deep Networks code.

Stem 3x3 conv (16 channels) + BN + ReLU, then 3 stages of 9 basic blocks with 16, 32, 64
channels (stages 2 and 3 start with stride 2), global average pooling and a linear layer.
A block whose shape changes uses a projection shortcut (1x1 conv + BN). From 64x64 up the stem
has stride 2, so at 64x64 the stages see the same 32x32 maps as on CIFAR; at 16x16 the last map is 4x4.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import LARGE_INPUT_SIZE, StagedNet, conv_bn_relu, init_weights
from .registry import register

STAGE_CHANNELS = (16, 32, 64)


class BasicBlock(nn.Module):
    """Two 3x3 conv + BN layers, added to the (projected) input, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.residual(x) + self.shortcut(x))


class ResNet(StagedNet):
    """CIFAR ResNet of depth 6n+2: ``stages`` = [stem, block 1, ..., block 3n]."""

    def __init__(self, num_classes: int, input_size: int = 32, blocks_per_stage: int = 9, in_channels: int = 3) -> None:
        super().__init__(num_classes, input_size, in_channels)
        stem_stride = 2 if input_size >= LARGE_INPUT_SIZE else 1
        blocks: list[nn.Module] = [conv_bn_relu(in_channels, STAGE_CHANNELS[0], stride=stem_stride)]
        in_channels = STAGE_CHANNELS[0]
        for stage, channels in enumerate(STAGE_CHANNELS):
            for index in range(blocks_per_stage):
                stride = 2 if stage > 0 and index == 0 else 1
                blocks.append(BasicBlock(in_channels, channels, stride))
                in_channels = channels
        self.stages = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_channels, num_classes))
        init_weights(self)


@register("resnet56", weight_decay=1e-4)
def resnet56(num_classes: int, input_size: int = 32, in_channels: int = 3) -> ResNet:
    """ResNet-56 (9 blocks per stage) for ``in_channels`` x ``input_size`` x ``input_size`` images."""
    return ResNet(num_classes, input_size, blocks_per_stage=9, in_channels=in_channels)
