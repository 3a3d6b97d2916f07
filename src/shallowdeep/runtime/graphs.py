"""The graphs the runtime runs, composed from an export's stage graphs and a policy (ONNX only, no torch).

- :func:`decision_stage`: stage k with the policy's test appended: besides the stage's own outputs, whether
  each sample goes on (``go_on``), the exit's ``confidence`` and the policy's next state. The streaming engine
  runs these on batches.
- :func:`fused_early_exit`: the whole early exit for one image as one graph: stage 0, its test, and an ONNX
  ``If`` whose branch runs the rest only when the image goes on, and so on down to the final head. One call
  per image, and a sample that leaves early runs nothing past its exit.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import onnx
from onnx import GraphProto, NodeProto, TensorProto, helper, numpy_helper

from .manifest import NEXT, Manifest
from .policies import decision_nodes, start_state, state_inputs

KEYS = "keys"
IMAGE = "h"  # stage 0's input: the normalised image
OUTPUTS = ("logits", "exit", "confidence")  # the fused graph's


def _inline(graph: GraphProto, prefix: str, inputs: dict[str, str]) -> tuple[list[NodeProto], list[onnx.TensorProto],
                                                                             dict[str, str]]:
    """``graph``'s nodes and initializers with every value renamed under ``prefix``, its inputs read from the
    outer names ``inputs``; returns them with the new names of its outputs."""
    names = {**inputs, "": ""}
    rename = lambda name: names.setdefault(name, prefix + name)  # noqa: E731
    initializers = []
    for tensor in graph.initializer:
        copy = onnx.TensorProto()
        copy.CopyFrom(tensor)
        copy.name = rename(tensor.name)
        initializers.append(copy)
    nodes = []
    for node in graph.node:
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            raise ValueError(f"stage graph node {node.name} holds a subgraph, which the runtime cannot inline")
        copy = NodeProto()
        copy.CopyFrom(node)
        copy.name = prefix + node.name
        copy.input[:] = [rename(v) for v in node.input]
        copy.output[:] = [rename(v) for v in node.output]
        nodes.append(copy)
    return nodes, initializers, {o.name: rename(o.name) for o in graph.output}


def decision_stage(manifest: Manifest, stage: onnx.ModelProto, index: int, policy: str) -> onnx.ModelProto:
    """Stage ``index`` of ``manifest`` (its graph ``stage``) followed by ``policy``'s test; inputs: the stage's
    own, ``keys`` (one per IC) and the policy's state; outputs: the stage's own, ``go_on`` and ``confidence``
    (an IC) or ``confidence`` (the final head), and the policy's ``*_next`` state."""
    is_ic = index < manifest.num_ics
    graph = stage.graph
    nodes, initializers, outputs = _inline(graph, "", {v.name: v.name for v in graph.input})
    state = {name: name for name, _ in state_inputs(policy)}
    more, roles = decision_nodes(policy, index if is_ic else None, outputs["logits"], KEYS, state, "policy/",
                                 len(manifest.classes))
    inputs = list(graph.input)
    outs = list(graph.output)
    extra_outputs = [helper.make_node("Identity", [roles["confidence"]], ["confidence"])]
    outs.append(helper.make_tensor_value_info("confidence", TensorProto.FLOAT, ["batch"]))
    if is_ic:
        inputs.append(helper.make_tensor_value_info(KEYS, TensorProto.FLOAT, [manifest.num_ics]))
        inputs += [helper.make_tensor_value_info(name, kind, ["batch"]) for name, kind in state_inputs(policy)]
        extra_outputs.append(helper.make_node("Identity", [roles["go_on"]], ["go_on"]))
        outs.append(helper.make_tensor_value_info("go_on", TensorProto.BOOL, ["batch"]))
        for name, kind in state_inputs(policy):
            extra_outputs.append(helper.make_node("Identity", [roles[name + NEXT]], [name + NEXT]))
            outs.append(helper.make_tensor_value_info(name + NEXT, kind, ["batch"]))
    composed = helper.make_graph([*nodes, *more, *extra_outputs], f"stage{index}+{policy}", inputs, outs,
                                 initializer=initializers)
    return _model(composed, stage)


def fused_early_exit(manifest: Manifest, stages: Sequence[onnx.ModelProto], policy: str,
                     keys: Sequence[float], overridable: bool = True) -> onnx.ModelProto:
    """The whole early exit of one image under ``policy`` as one graph. Input ``h``: the normalised image
    ``(1, C, H, W)``; ``keys`` (default: the given ones) and the policy's start state are inputs with defaults
    where ``overridable``, else constants (one input fewer to feed, and onnxruntime folds what they decide).
    Outputs: ``logits`` (what the exit that answers answers), ``exit`` (its index) and ``confidence``."""
    classes = len(manifest.classes)

    def chain(index: int, values: dict[str, str]) -> tuple[list[NodeProto], list[onnx.TensorProto], tuple[str, str, str]]:
        """Stage ``index`` and, in an ``If`` branch taken by those that go on, every stage after it; the stage's
        weights stay in its own (sub)graph, where onnxruntime optimises them."""
        prefix = f"s{index}/"
        graph = stages[index].graph
        nodes, inits, outputs = _inline(graph, prefix, {v.name: values[v.name] for v in graph.input})
        is_ic = index < manifest.num_ics
        state = {name: values[name] for name, _ in state_inputs(policy)}
        more, roles = decision_nodes(policy, index if is_ic else None, outputs["logits"], values[KEYS], state,
                                     prefix + "policy/", classes)
        nodes += more
        exit_here = _constant(nodes, f"{prefix}exit", np.array([index], np.int64))
        answer = (outputs["logits"], exit_here, roles["confidence"])
        if not is_ic:
            return nodes, inits, answer
        following = {name.removesuffix(NEXT): value for name, value in outputs.items() if name.endswith(NEXT)}
        following.update({name: roles[name + NEXT] for name in state})
        following[KEYS] = values[KEYS]
        deeper, deeper_inits, deeper_answer = chain(index + 1, following)
        go_on_branch = _branch(f"{prefix}go_on", deeper, deeper_inits, deeper_answer, classes)
        stop_branch = _branch(f"{prefix}stop", [], [], answer, classes)
        condition = helper.make_node("Squeeze", [roles["go_on"]], [f"{prefix}cond"], name=f"{prefix}cond/node")
        result = tuple(f"{prefix}answer/{name}" for name in OUTPUTS)
        nodes += [condition, helper.make_node("If", [f"{prefix}cond"], list(result), name=f"{prefix}if",
                                              then_branch=go_on_branch, else_branch=stop_branch)]
        return nodes, inits, result

    values = {IMAGE: IMAGE, KEYS: KEYS, **{name: name for name, _ in state_inputs(policy)}}
    nodes, initializers, answer = chain(0, values)
    nodes += [helper.make_node("Identity", [value], [name], name=f"{name}/out") for value, name in zip(answer, OUTPUTS)]
    image = stages[0].graph.input[0]
    defaults = {KEYS: np.asarray(keys, np.float32), **start_state(policy, 1)}
    inputs = [_with_batch(image, 1)]
    if overridable:
        inputs += [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape))
                   for name, v in defaults.items()]
    initializers += [numpy_helper.from_array(v, name) for name, v in defaults.items()]
    graph = helper.make_graph(nodes, f"early-exit+{policy}", inputs, _answer_infos("", classes),
                              initializer=initializers)
    return _model(graph, stages[0])


def _constant(nodes: list[NodeProto], name: str, value: np.ndarray) -> str:
    nodes.append(helper.make_node("Constant", [], [name], name=f"{name}/node", value=numpy_helper.from_array(value)))
    return name


def _branch(name: str, nodes: list[NodeProto], initializers: list[onnx.TensorProto], answer: tuple[str, str, str],
            classes: int) -> GraphProto:
    """A subgraph of an ``If``: ``nodes`` (with their ``initializers``), then ``answer`` copied to its outputs."""
    outs = _answer_infos(f"{name}/", classes)
    copies = [helper.make_node("Identity", [value], [info.name], name=f"{info.name}/node")
              for value, info in zip(answer, outs)]
    return helper.make_graph([*nodes, *copies], name, [], outs, initializer=initializers)


def _answer_infos(prefix: str, classes: int) -> list[onnx.ValueInfoProto]:
    return [helper.make_tensor_value_info(f"{prefix}logits", TensorProto.FLOAT, [1, classes]),
            helper.make_tensor_value_info(f"{prefix}exit", TensorProto.INT64, [1]),
            helper.make_tensor_value_info(f"{prefix}confidence", TensorProto.FLOAT, [1])]


def _with_batch(info: onnx.ValueInfoProto, batch: int) -> onnx.ValueInfoProto:
    dims = [d.dim_value for d in info.type.tensor_type.shape.dim][1:]
    return helper.make_tensor_value_info(info.name, info.type.tensor_type.elem_type, [batch, *dims])


def _model(graph: GraphProto, like: onnx.ModelProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=list(like.opset_import), producer_name="shallowdeep")
    model.ir_version = like.ir_version
    return model
