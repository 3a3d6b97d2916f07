"""Which axis of a traced value holds its features: the first after the batch, as in a CNN's
(N, C, H, W) maps, or the last, as in a vision transformer's (N, tokens, dim) sequences and Swin's
(N, H, W, C) maps.

A shape alone does not tell (a 4-D value may be either), so the layout is read from the nearest
operation that fixes it. A convolution, batch, group or instance norm, or 2-D pooling reads and
writes channels-first values; a linear layer or layer norm works on the last axis. The search
starts at the value and walks, nearest first, to its producers and users through values of the
same last-axis size (element-wise work, residual adds, dropout, reshapes of the other axes).
"""

from __future__ import annotations

import math
from typing import Mapping

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

CHANNELS_FIRST = "channels-first"
CHANNELS_LAST = "channels-last"
MAX_STEPS = 8  # how far from the value the search looks

# What an exit reads, by the layout of the value there (a cut point's ``layout``):
FEATURE_MAP = "C,H,W map"  # a CNN's map, read by the designs' convolutional heads
TOKENS = "tokens"  # a transformer's (tokens, dim) sequence, read by a token head
CHANNELS_LAST_MAP = "H,W,C map as tokens"  # a channels-last map (Swin), read by a token head as H*W tokens

_LAST_AXIS_MODULES = (nn.Linear, nn.LayerNorm)
_LAST_AXIS_FUNCTIONS = {F.linear, F.layer_norm, torch.layer_norm}
_CHANNELS_FIRST_MODULES = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm,
    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d,
    nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
)
_CHANNELS_FIRST_FUNCTIONS = {
    F.conv1d, F.conv2d, F.conv3d, torch.conv1d, torch.conv2d, torch.conv3d, F.batch_norm, torch.batch_norm,
    F.group_norm, F.instance_norm, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d,
    torch.max_pool2d,
}


def exit_input(node: torch.fx.Node, modules: Mapping[str, nn.Module]) -> tuple[tuple[int, ...], str] | None:
    """What an IC at ``node`` reads per image, (C, H, W) or (tokens, dim), and the value's layout
    (:data:`FEATURE_MAP`, :data:`TOKENS` or :data:`CHANNELS_LAST_MAP`); None where no IC can read it.

    A 4-D value is channels-first unless an operation shows otherwise (a CNN's maps stay as they were);
    a 3-D one is a token sequence only where an operation shows that its last axis holds the features."""
    shape = tuple(getattr(node.meta.get("tensor_meta"), "shape", ()))[1:]
    if len(shape) not in (2, 3):
        return None
    layout = feature_layout(node, modules)
    if layout == CHANNELS_LAST:
        return (math.prod(shape[:-1]), shape[-1]), (TOKENS if len(shape) == 2 else CHANNELS_LAST_MAP)
    return (shape, FEATURE_MAP) if len(shape) == 3 else None


def feature_layout(node: torch.fx.Node, modules: Mapping[str, nn.Module]) -> str | None:
    """:data:`CHANNELS_FIRST` or :data:`CHANNELS_LAST` for ``node``'s value (shapes from ``ShapeProp``), from
    the nearest operation that fixes it (channels first where two equally near disagree); None when no
    such operation lies within :data:`MAX_STEPS` or the value is not a tensor of at least 3 dimensions."""
    last = _last_axis_size(node)
    if last is None:
        return None
    seen, frontier = {node}, [node]
    for _ in range(MAX_STEPS):
        found = {layout for n in frontier for layout in _layouts_fixed_at(n, modules)}
        if found:
            return CHANNELS_FIRST if CHANNELS_FIRST in found else CHANNELS_LAST
        neighbours = [m for n in frontier for m in (*n.all_input_nodes, *n.users)]
        frontier = [m for m in dict.fromkeys(neighbours) if m not in seen and _last_axis_size(m) == last
                    and m.op != "get_attr"]
        seen.update(frontier)
    return None


def _last_axis_size(node: torch.fx.Node) -> int | None:
    """The size of the last axis of ``node``'s value, if it is a tensor of 3 or more dimensions."""
    shape = getattr(node.meta.get("tensor_meta"), "shape", None)
    return shape[-1] if shape is not None and len(shape) >= 3 else None


def _layouts_fixed_at(node: torch.fx.Node, modules: Mapping[str, nn.Module]) -> set[str]:
    """The layouts fixed for ``node``'s value by the operation computing it and by those reading it first."""
    layouts = {_layout_of_operation(node, modules)}
    layouts.update(_layout_of_operation(user, modules) for user in node.users if user.args and user.args[0] is node)
    return layouts - {None}


def _layout_of_operation(node: torch.fx.Node, modules: Mapping[str, nn.Module]) -> str | None:
    """The layout the operation of ``node`` works in, if it fixes one."""
    if node.op == "call_module":
        module = modules.get(str(node.target))
        if isinstance(module, _LAST_AXIS_MODULES):
            return CHANNELS_LAST
        if isinstance(module, _CHANNELS_FIRST_MODULES):
            return CHANNELS_FIRST
    if node.op == "call_function":
        if node.target in _LAST_AXIS_FUNCTIONS:
            return CHANNELS_LAST
        if node.target in _CHANNELS_FIRST_FUNCTIONS:
            return CHANNELS_FIRST
    return None
