"""The paper's four backbones and a registry: ``create(name, num_classes, input_size)``.

Every model is a :class:`StagedNet`: ``forward(x) == head(stages(x))`` with ``stages`` an
``nn.Sequential`` of blocks (exits may go between any two) and ``head`` the pooling and
classifier; ``forward_features`` / ``forward_head`` split the two as in timm. All are
``torch.fx``-traceable.

Input sizes 16, 32 and 64 (square) are accepted. 32 is the CIFAR layout of the paper; 64 is its
Tiny ImageNet layout (ResNet and Wide-ResNet: stride-2 stem; VGG: 2x2x512 map and wider
fully-connected layers; MobileNet: unchanged, 4x4 last map). 16 uses the 32 layout, except that
VGG leaves out its last max-pool (the map is already 1x1). Pooling before the classifier is
global, so every model takes the same parameters at 16 and 32.
"""

from . import mobilenet, resnet, vgg, wideresnet
from .base import SUPPORTED_INPUT_SIZES, StagedNet
from .registry import available, create, default_weight_decay, register

__all__ = [
    "SUPPORTED_INPUT_SIZES",
    "StagedNet",
    "available",
    "create",
    "default_weight_decay",
    "mobilenet",
    "register",
    "resnet",
    "vgg",
    "wideresnet",
]
