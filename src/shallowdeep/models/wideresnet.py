"""Wide-ResNet-32-4 with dropout 0.3 (Zagoruyko & Komodakis 2016), as in the Shallow-Deep Networks code.

Stem 3x3 conv (16 channels, with bias), then 3 stages of 5 pre-activation wide basic blocks
with 64, 128, 256 channels (stages 2 and 3 start with stride 2, carried by the block's second
conv), then BN + ReLU, global average pooling and a linear layer. Convolutions have biases;
a block whose shape changes uses a 1x1 conv shortcut. From 64x64 up the stem has stride 2, so at
64x64 the stages see 32x32 maps as on CIFAR; at 16x16 the last map is 4x4.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import LARGE_INPUT_SIZE, StagedNet, init_weights
from .registry import register

STEM_CHANNELS = 16
STAGE_CHANNELS = (16, 32, 64)


class WideBasicBlock(nn.Module):
    """BN-ReLU-conv3x3-dropout-BN-ReLU-conv3x3, added to the (projected) input."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.ReLU(),
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            nn.Dropout(dropout),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, 3, stride=stride, padding=1),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.residual(x) + self.shortcut(x)


class WideResNet(StagedNet):
    """Wide-ResNet: ``stages`` = [stem conv, block 1, ..., block 3n]; the head starts with BN + ReLU."""

    def __init__(
        self,
        num_classes: int,
        input_size: int = 32,
        blocks_per_stage: int = 5,
        widen_factor: int = 4,
        dropout: float = 0.3,
        in_channels: int = 3,
    ) -> None:
        super().__init__(num_classes, input_size, in_channels)
        stem_stride = 2 if input_size >= LARGE_INPUT_SIZE else 1
        blocks: list[nn.Module] = [nn.Conv2d(in_channels, STEM_CHANNELS, 3, stride=stem_stride, padding=1)]
        in_channels = STEM_CHANNELS
        for stage, base_channels in enumerate(STAGE_CHANNELS):
            channels = base_channels * widen_factor
            for index in range(blocks_per_stage):
                stride = 2 if stage > 0 and index == 0 else 1
                blocks.append(WideBasicBlock(in_channels, channels, stride, dropout))
                in_channels = channels
        self.stages = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(in_channels, num_classes),
        )
        init_weights(self)


@register("wrn32_4", weight_decay=5e-4)
def wrn32_4(num_classes: int, input_size: int = 32, in_channels: int = 3) -> WideResNet:
    """Wide-ResNet-32-4 (5 blocks per stage, dropout 0.3) for ``in_channels`` x ``input_size`` x ``input_size``
    images."""
    return WideResNet(num_classes, input_size, blocks_per_stage=5, widen_factor=4, dropout=0.3,
                      in_channels=in_channels)
