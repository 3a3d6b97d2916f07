"""Exact rewrites of an exported stage graph that let onnxruntime keep its blocked channel layout (NCHWc).

On CPU, onnxruntime runs convolutions in a blocked layout and converts a tensor back to plain NCHW for any node
it cannot run blocked; everything after such a node stays plain (measured on the third-party ResNet-56: from
the first downsampling block on, every residual block paid two layout conversions and an unfused add).

- :func:`shortcuts_as_convolutions`: the parameter-free shortcut of CIFAR ResNets ("option A": every second
  pixel, zero channels padded on), exported as ``Slice -> Slice -> Pad``, becomes a 1x1 convolution with stride
  2 whose weights are 0 and 1, which gives the same numbers and stays blocked.
- :func:`blocked_input`: a stage that starts inside a residual stage reads its input in plain layout, so the
  first residual add, and every block after it, ran unblocked until the next downsampling. An identity
  depthwise 1x1 convolution on the input (weights 1) makes the input blocked from the start.

:func:`keep_blocked` applies both; every exported graph goes through it.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


def keep_blocked(model: onnx.ModelProto) -> bool:
    """Every rewrite of this module on ``model``, in place; whether any applied."""
    return bool(shortcuts_as_convolutions(model) + blocked_input(model))


def shortcuts_as_convolutions(model: onnx.ModelProto) -> int:
    """Rewrite in place every ``Slice(step 2 on H) -> Slice(step 2 on W) -> Pad(zero channels)`` (either slice
    first) of ``model`` as one strided 1x1 ``Conv``; returns how many were rewritten."""
    graph = model.graph
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    channels = _channel_counts(model)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    producers = {value: node for node in graph.node for value in node.output}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    graph_outputs = {o.name for o in graph.output}
    rewritten = 0
    for pad in [n for n in graph.node if n.op_type == "Pad"]:
        second = producers.get(pad.input[0])
        first = producers.get(second.input[0]) if second is not None and second.op_type == "Slice" else None
        if first is None or first.op_type != "Slice":
            continue
        axes = [_halving_axis(s, constants) for s in (first, second)]
        c_in = channels.get(first.input[0])
        before_after = _channel_padding(pad, constants)
        if sorted(a for a in axes if a is not None) != [2, 3] or c_in is None or before_after is None:
            continue
        if any(len(consumers.get(v, [])) != 1 or v in graph_outputs for v in (first.output[0], second.output[0])):
            continue
        before, after = before_after
        weight = np.zeros((before + c_in + after, c_in, 1, 1), np.float32)
        weight[before + np.arange(c_in), np.arange(c_in)] = 1.0
        name = f"{pad.output[0]}_as_conv"
        graph.initializer.append(numpy_helper.from_array(weight, f"{name}.weight"))
        conv = helper.make_node("Conv", [first.input[0], f"{name}.weight"], [pad.output[0]], name=name,
                                kernel_shape=[1, 1], strides=[2, 2])
        position = list(graph.node).index(first)
        for old in (first, second, pad):
            graph.node.remove(old)
        graph.node.insert(position, conv)
        rewritten += 1
    return rewritten


def blocked_input(model: onnx.ModelProto, name: str = "h", block: int = 8) -> bool:
    """Rewrite in place: graph input ``name``, when a 4-d map whose channels are a multiple of ``block``, is read
    through an identity depthwise 1x1 ``Conv``; returns whether it was."""
    graph = model.graph
    channels = _channel_counts(model).get(name)
    if (channels is None or channels % block or name in {o.name for o in graph.output}
            or not any(name in node.input for node in graph.node)):
        return False
    blocked = f"{name}_blocked"
    for node in graph.node:
        node.input[:] = [blocked if v == name else v for v in node.input]
    graph.initializer.append(numpy_helper.from_array(np.ones((channels, 1, 1, 1), np.float32), f"{blocked}.weight"))
    graph.node.insert(0, helper.make_node("Conv", [name, f"{blocked}.weight"], [blocked], name=blocked,
                                          kernel_shape=[1, 1], group=channels))
    return True


def _halving_axis(node: onnx.NodeProto, constants: dict[str, np.ndarray]) -> int | None:
    """The axis a ``Slice`` takes every second element of from the start (whole axis), else None."""
    if len(node.input) != 5 or any(v not in constants for v in node.input[1:]):
        return None
    starts, ends, axes, steps = (constants[v].reshape(-1) for v in node.input[1:])
    if len(axes) != 1 or starts[0] != 0 or ends[0] < 2 ** 31 - 1 or steps[0] != 2:
        return None
    return int(axes[0]) if axes[0] >= 0 else int(axes[0]) + 4


def _channel_padding(pad: onnx.NodeProto, constants: dict[str, np.ndarray]) -> tuple[int, int] | None:
    """(before, after) when ``pad`` adds zeros on the channel axis of a 4-d tensor only, else None."""
    mode = next((a.s for a in pad.attribute if a.name == "mode"), b"constant")
    if mode != b"constant" or len(pad.input) < 2 or pad.input[1] not in constants:
        return None
    if len(pad.input) > 2 and pad.input[2] and (pad.input[2] not in constants or constants[pad.input[2]] != 0):
        return None
    if len(pad.input) > 3 and pad.input[3]:
        return None
    pads = constants[pad.input[1]].reshape(-1)
    if len(pads) != 8 or any(pads[[0, 2, 3, 4, 6, 7]]) or min(pads) < 0:
        return None
    return int(pads[1]), int(pads[5])


def _channel_counts(model: onnx.ModelProto) -> dict[str, int]:
    """The channel count (axis 1) of every 4-d value whose shape inference knows it."""
    inferred = onnx.shape_inference.infer_shapes(model)
    counts = {}
    for info in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        dims = info.type.tensor_type.shape.dim
        if len(dims) == 4 and dims[1].HasField("dim_value"):
            counts[info.name] = dims[1].dim_value
    return counts
