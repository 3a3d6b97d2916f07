"""Exit policies as ONNX nodes: the runtime's one definition of when a sample stops.

The same rules as :mod:`shallowdeep.exits.policies` on the torch side (tested against it sample by sample):
a sample goes on past IC k while its score is below ``keys[k]`` (a NaN score never stops), where

- ``maxprob`` and ``maxprob-per-exit``: score = the largest softmax probability;
- ``entropy``: score = the sum of p log p over the classes divided by log(classes) (minus the normalised
  entropy), key = minus the threshold;
- ``patience``: score = how many consecutive exits, ending at this one, predict the same class (NaN logits
  agree with nothing); its state, the previous exit's class ``pred`` and the run length ``run``, goes from
  stage to stage as ``pred_next`` and ``run_next``.

Every stage also answers ``confidence``: the largest softmax probability of what its exit answers.
"""

from __future__ import annotations

import math
from itertools import count

import numpy as np
import onnx
from onnx import NodeProto, TensorProto, helper, numpy_helper

STATE: dict[str, tuple[tuple[str, int], ...]] = {"patience": (("pred", TensorProto.INT64), ("run", TensorProto.FLOAT))}


def state_inputs(policy: str) -> tuple[tuple[str, int], ...]:
    """The names and ONNX element types of the state the policy carries from stage to stage."""
    return STATE.get(policy, ())


def start_state(policy: str, n: int) -> dict[str, np.ndarray]:
    """The state of ``n`` samples before the first IC (no previous class, no run)."""
    if policy == "patience":
        return {"pred": np.full(n, -1, np.int64), "run": np.zeros(n, np.float32)}
    return {}


class _Nodes:
    """A list of ONNX nodes with fresh value names under one prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix, self.nodes, self._ids = prefix, [], count()

    def add(self, op: str, inputs: list[str], output: str | None = None, **attrs: object) -> str:
        output = output or f"{self.prefix}{op.lower()}{next(self._ids)}"
        self.nodes.append(helper.make_node(op, inputs, [output], name=f"{output}/node", **attrs))
        return output

    def const(self, value: np.ndarray) -> str:
        name = f"{self.prefix}const{next(self._ids)}"
        self.nodes.append(helper.make_node("Constant", [], [name], name=f"{name}/node",
                                           value=numpy_helper.from_array(value, name)))
        return name


def decision_nodes(policy: str, index: int | None, logits: str, keys: str, state: dict[str, str], prefix: str,
                   num_classes: int) -> tuple[list[NodeProto], dict[str, str]]:
    """Nodes reading exit ``index``'s ``logits`` (its answer) and, for IC exits, the ``keys`` of every IC and the
    policy's ``state`` (graph values by state name, see :func:`state_inputs`); new values are named under
    ``prefix``. Returns the nodes and their outputs by role: ``confidence`` always; for an IC (``index`` not
    None) also ``go_on`` and the state's ``*_next`` values."""
    b = _Nodes(prefix)
    last_axis = b.const(np.array([-1], np.int64))
    probs = b.add("Softmax", [logits], axis=-1)
    confidence = b.add("ReduceMax", [probs, last_axis], keepdims=0)
    out = {"confidence": confidence}
    if index is None:
        return b.nodes, out
    key = b.add("Gather", [keys, b.const(np.array(index, np.int64))], axis=0)
    if policy == "patience":
        now = b.add("ArgMax", [logits], axis=-1, keepdims=0)
        longer = b.add("Add", [state["run"], b.const(np.array(1.0, np.float32))])
        one, zero = b.const(np.array(1.0, np.float32)), b.const(np.array(0.0, np.float32))
        run = b.add("Where", [b.add("Equal", [now, state["pred"]]), longer, one])
        broken = b.add("ReduceMax", [b.add("Cast", [b.add("IsNaN", [logits])], to=TensorProto.FLOAT), last_axis],
                       keepdims=0)
        run = b.add("Where", [b.add("Greater", [broken, zero]), zero, run])
        out.update(go_on=b.add("Less", [run, key]), pred_next=now, run_next=run)
        return b.nodes, out
    if policy == "entropy":
        log_p = b.add("LogSoftmax", [logits], axis=-1)
        p_log_p = b.add("ReduceSum", [b.add("Mul", [b.add("Exp", [log_p]), log_p]), last_axis], keepdims=0)
        score = b.add("Div", [p_log_p, b.const(np.array(math.log(max(2, num_classes)), np.float32))])
    else:  # maxprob, maxprob-per-exit
        score = confidence
    out["go_on"] = b.add("Not", [b.add("GreaterOrEqual", [score, key])])  # NaN: never stops
    return b.nodes, out


def value_info(name: str, elem_type: int, shape: list[int | str | None]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, shape)
