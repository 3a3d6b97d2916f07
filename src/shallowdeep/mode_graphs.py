"""SDN segments that act in training as the model does.

``torch.fx`` records a forward as it runs in the mode it is traced in: code that branches on
``self.training`` (timm's drop-path, torchvision's stochastic depth, ``F.dropout(x, p, self.training)``,
``if self.training: ...``) is frozen to that mode. When a model traces differently in train mode, its
train-mode graph is split at the same cut points as the eval-mode one (``torchvision.models.feature_extraction``
traces both modes too), and each segment whose two graphs differ becomes a :class:`ModeSegment`, which runs
the train-mode graph while training and the eval-mode one otherwise, on the same parameters and buffers.
"""

from __future__ import annotations

import warnings
from collections import Counter
from functools import reduce
from typing import Any, Sequence

import torch
import torch.fx
from torch import nn

from .errors import UserError, first_line
from .fx_split import CutPoint, cut_indices, split_graph, trace
from .trace_options import TraceOptions


class _Unmatched(Exception):
    """Why the train-mode graph cannot be split as the eval-mode one is."""


class ModeSegment(nn.Module):
    """A segment traced in both modes: the train-mode graph runs while training, the eval-mode one otherwise.

    It holds the eval-mode segment's modules, parameters and buffers under the same names (its state dict is
    that segment's) and runs either graph's code on them.
    """

    def __init__(self, eval_segment: torch.fx.GraphModule, train_segment: torch.fx.GraphModule) -> None:
        super().__init__()
        for name, child in eval_segment.named_children():
            self.add_module(name, child)
        for name, param in eval_segment.named_parameters(recurse=False):
            self.register_parameter(name, param)
        for name, buffer in eval_segment.named_buffers(recurse=False):
            self.register_buffer(name, buffer, persistent=name not in eval_segment._non_persistent_buffers_set)
        _check_holds_state_of(self, eval_segment, "eval")
        self._adopt_trace_constants(train_segment)
        _check_holds_state_of(self, train_segment, "train")
        self.graph_modules = {"eval": eval_segment, "train": train_segment}  # not submodules: only their code runs

    def _adopt_trace_constants(self, train_segment: torch.fx.GraphModule) -> None:
        """Give the train-mode code the tensor constants fx made while tracing it (attention masks, index
        tables: ``_tensor_constantN``, numbered per trace) that this segment lacks or holds under that name with
        another value: each becomes a non-persistent buffer (outside the state dict) under a name of its own."""
        renamed = False
        for node in train_segment.graph.nodes:
            if node.op != "get_attr" or not str(node.target).startswith("_tensor_constant"):
                continue
            theirs, mine = _attribute(train_segment, node.target), _attribute(self, node.target)
            if mine is theirs or (isinstance(mine, torch.Tensor) and mine.shape == theirs.shape
                                  and torch.equal(mine, theirs)):
                continue
            name = f"_train_constant{sum(1 for n, _ in self.named_buffers(recurse=False) if n.startswith('_train_'))}"
            for holder in (self, train_segment):
                holder.register_buffer(name, theirs, persistent=False)
            node.target, renamed = name, True
        if renamed:
            train_segment.recompile()

    def forward(self, x: torch.Tensor) -> Any:
        code = type(self.graph_modules["train" if self.training else "eval"]).forward  # fx's generated forward
        return code(self, x)


def keep_train_mode(model: nn.Module, eval_graph: torch.fx.GraphModule, cuts: Sequence[CutPoint],
                    segments: Sequence[torch.fx.GraphModule], tracing: TraceOptions = TraceOptions()
                    ) -> list[nn.Module]:
    """``segments`` (``eval_graph`` split at ``cuts``), each made a :class:`ModeSegment` where ``model``
    traced in train mode computes something else; unchanged for a model that traces alike in both modes.
    Where the train-mode graph cannot be split likewise, a warning says so and ``segments`` stay as they are."""
    try:
        train_graph = _traced_in_train_mode(model, tracing)
        if _steps(train_graph) == _steps(eval_graph):
            return list(segments)
        train_segments = split_graph(train_graph, _matching_cuts(eval_graph, train_graph, cuts))
        return [_paired(e, t) for e, t in zip(segments, train_segments)]
    except _Unmatched as reason:
        warnings.warn(f"cannot keep {type(model).__name__}'s train-mode behaviour ({reason}): the SDN runs its "
                      "eval-mode graph in training too, so code that checks self.training (drop-path, functional "
                      "dropout) acts as in eval mode", stacklevel=3)
        return list(segments)


def _traced_in_train_mode(model: nn.Module, tracing: TraceOptions) -> torch.fx.GraphModule:
    """``model`` traced in train mode (with ``tracing``'s leaves); every submodule's mode is left as it was."""
    modes = [(m, m.training) for m in model.modules()]
    model.train()
    try:
        return trace(model, tracing)
    except UserError as exc:
        raise _Unmatched(f"torch.fx cannot trace it in train mode: {first_line(exc.__cause__ or exc)}") from exc
    finally:
        for module, training in modes:
            module.training = training


def _steps(graph_module: torch.fx.GraphModule) -> list[tuple[str, str, str, str]]:
    """What the graph computes, node by node, with node names replaced by positions (numbering differs
    between traces)."""
    nodes = list(graph_module.graph.nodes)
    position = {n: i for i, n in enumerate(nodes)}
    at = lambda args: repr(torch.fx.map_arg(args, position.__getitem__))  # noqa: E731
    return [(n.op, str(n.target), at(n.args), at(n.kwargs)) for n in nodes]


def _identities(nodes: Sequence[torch.fx.Node]) -> list[tuple[Any, ...]]:
    """For each node what both traces agree on: its operation, the modules it lies in, and how many such
    nodes come before it. (fx numbers node names over the whole graph, so the nodes only one mode computes
    shift the other nodes' names.)"""
    seen: Counter = Counter()
    identities = []
    for node in nodes:
        kind = (node.op, str(node.target), tuple(node.meta.get("nn_module_stack") or ()))
        identities.append((*kind, seen[kind]))
        seen[kind] += 1
    return identities


def _matching_cuts(eval_graph: torch.fx.GraphModule, train_graph: torch.fx.GraphModule,
                   cuts: Sequence[CutPoint]) -> list[int]:
    """The train-mode graph's node index of each cut: the same node, itself a cut point there, in the same order."""
    eval_ids = _identities(list(eval_graph.graph.nodes))
    train_nodes = list(train_graph.graph.nodes)
    position = {identity: i for i, identity in enumerate(_identities(train_nodes))}
    cuttable = set(cut_indices(train_nodes))
    found: list[int] = []
    for cut in cuts:
        index = position.get(eval_ids[cut.index])
        if index not in cuttable or (found and index <= found[-1]):
            raise _Unmatched(f"exit '{cut.name}' has no matching point in its train-mode graph")
        found.append(index)
    if not isinstance(train_nodes[-1].args[0], torch.fx.Node):
        raise _Unmatched("its train-mode forward does not return one tensor")
    return found


def _paired(eval_segment: torch.fx.GraphModule, train_segment: torch.fx.GraphModule) -> nn.Module:
    """``eval_segment`` itself where both modes compute the same, else a :class:`ModeSegment` of both."""
    if _steps(eval_segment) == _steps(train_segment):
        return eval_segment
    return ModeSegment(eval_segment, train_segment)


def _check_holds_state_of(module: nn.Module, segment: torch.fx.GraphModule, mode: str) -> None:
    """Raise :class:`_Unmatched` unless every module and tensor ``segment``'s code reads is ``module``'s too
    (a tensor constant of the trace: an equal one)."""
    for node in segment.graph.nodes:
        if node.op in ("call_module", "get_attr"):
            mine, theirs = _attribute(module, node.target), _attribute(segment, node.target)
            same_constant = isinstance(mine, torch.Tensor) and isinstance(theirs, torch.Tensor) \
                and mine.shape == theirs.shape and torch.equal(mine, theirs)
            if mine is not theirs and not same_constant:
                raise _Unmatched(f"its {mode}-mode graph reads '{node.target}', which the eval-mode segment lacks")


def _attribute(module: nn.Module, target: str) -> Any:
    """The object at the dotted path ``target`` under ``module``; None where there is none."""
    return reduce(lambda obj, name: getattr(obj, name, None), target.split("."), module)
