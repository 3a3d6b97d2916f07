"""Splitting a traced model into sequential segments: tracing with one-line errors, finding the nodes
after which only their own value is still needed (cut points, :class:`CutPoint` once measured), and cutting
the graph there."""

from __future__ import annotations

import hashlib
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.fx
from torch import nn

from .layouts import FEATURE_MAP
from .trace_options import TraceOptions, untraceable


@dataclass
class CutPoint:
    """A node after which the graph can be split."""

    index: int  # position in the graph's node list
    name: str  # the name attach() accepts for it: a module path, else the fx node name
    shape: tuple[int, ...]  # what an IC reads there per image: (C, H, W), or (tokens, dim)
    flops: int  # cumulative backbone FLOPs per image up to and including this node
    layout: str = FEATURE_MAP  # the value's layout (see shallowdeep.layouts): a C,H,W map, tokens, or an H,W,C map


def trace(model: nn.Module, options: TraceOptions = TraceOptions()) -> torch.fx.GraphModule:
    """``torch.fx.symbolic_trace`` with ``options``' leaf modules and autowrapped functions, and a one-line error
    naming what to make a leaf for models that cannot be traced."""
    tracer = _Tracer(options.leaf_classes(model), options.functions(model))
    try:
        graph = tracer.trace(model, defaulted_arguments(model))
        return torch.fx.GraphModule(tracer.root, graph, type(model).__name__)
    except Exception as exc:  # fx raises many kinds of errors for untraceable code
        raise untraceable(model, exc) from exc


class _Tracer(torch.fx.Tracer):
    """fx's tracer, with every module of the classes ``leaves`` a leaf and the functions ``functions`` wrapped."""

    def __init__(self, leaves: tuple[type, ...], functions: tuple[Callable, ...]) -> None:
        super().__init__(autowrap_functions=functions)
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return type(m) in self.leaves or super().is_leaf_module(m, module_qualified_name)


def graph_fingerprint(gm: torch.fx.GraphModule) -> str:
    """A digest of the code fx generated for ``gm``: equal for two traces of the same model by the same torch."""
    return hashlib.sha256(gm.code.encode()).hexdigest()[:16]


def defaulted_arguments(model: nn.Module) -> dict[str, Any] | None:
    """The defaults of ``model.forward``'s parameters after its input (timm's ViT takes ``attn_mask=None``), as
    ``symbolic_trace``'s ``concrete_args``: traced as constants, not as graph inputs that every block reads
    (which would leave no cut point). None when it has none."""
    try:
        parameters = list(inspect.signature(model.forward).parameters.values())[1:]
    except (TypeError, ValueError):  # no signature to read
        return None
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty} or None


def cut_indices(nodes: list[torch.fx.Node]) -> list[int]:
    """Indices of nodes after which only that node's own value is still needed."""
    position = {n: i for i, n in enumerate(nodes)}
    cuts = []
    furthest_use = -1  # the furthest position at which any earlier value is still used
    for i, node in enumerate(nodes):
        if node.op in ("output",):
            break
        last_use = max((position[u] for u in node.users), default=i)
        if node.op != "get_attr" and node.op != "placeholder" and furthest_use <= i and last_use > i:
            cuts.append(i)
        if node.op != "get_attr":
            furthest_use = max(furthest_use, last_use)
    return cuts


def split_graph(gm: torch.fx.GraphModule, cut_indices: Sequence[int]) -> list[torch.fx.GraphModule]:
    """Split ``gm`` after each of the given node indices into sequential single-input segments."""
    nodes = list(gm.graph.nodes)
    bounds = [-1, *cut_indices, len(nodes) - 1]
    segments = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        graph = torch.fx.Graph()
        env: dict[torch.fx.Node, torch.fx.Node] = {}
        if start >= 0:
            env[nodes[start]] = graph.placeholder("x")

        def lookup(n: torch.fx.Node, graph: torch.fx.Graph = graph, env: dict = env) -> torch.fx.Node:
            if n not in env:
                if n.op != "get_attr":
                    raise RuntimeError(f"node {n.name} crosses a cut")  # cut detection guarantees this
                env[n] = graph.node_copy(n, lambda m: env[m])
            return env[n]

        for node in nodes[start + 1 : end + 1]:
            if node.op == "get_attr":
                continue  # copied where it is used
            if node.op == "output":
                graph.output(torch.fx.map_arg(node.args[0], lookup))
                break
            env[node] = graph.node_copy(node, lookup)
        else:
            graph.output(env[nodes[end]])
        graph.lint()
        segments.append(torch.fx.GraphModule(gm, graph, class_name=f"Segment{len(segments)}"))
    return segments
