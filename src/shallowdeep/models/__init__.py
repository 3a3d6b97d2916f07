"""The paper's four backbones and a registry: ``create(name, num_classes, input_size, in_channels)``.

Every model is a :class:`StagedNet`: ``forward(x) == head(stages(x))`` with ``stages`` an
``nn.Sequential`` of blocks (exits may go between any two) and ``head`` the pooling and
classifier; ``forward_features`` / ``forward_head`` split the two as in timm. All are
``torch.fx``-traceable.

Any square input of side 16 or more is accepted, with any number of channels (``in_channels``, the
stem's input; 3 by default). 32 is the CIFAR layout of the paper; 64 is its Tiny ImageNet layout
(ResNet and Wide-ResNet: stride-2 stem; VGG: 2x2x512 map and wider fully-connected layers;
MobileNet: unchanged, 4x4 last map). Sides below 64 use the 32 layout (16: VGG leaves out its last
max-pool, the map being already 1x1), sides from 64 up the 64 layout. Pooling before the classifier
is global (VGG's head excepted), so ResNet, Wide-ResNet and MobileNet take the same parameters at
every side.
"""

from . import mobilenet, resnet, vgg, wideresnet
from .base import MIN_INPUT_SIZE, StagedNet
from .registry import available, create, default_weight_decay, register

__all__ = [
    "MIN_INPUT_SIZE",
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
