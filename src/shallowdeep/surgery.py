"""Turning any traceable classifier into an SDN.

The model is traced with ``torch.fx`` (as ``torchvision.models.feature_extraction`` does).
A *cut point* is a node after which no earlier value is needed any more, so the graph can be
split there into two sequential segments: block outputs of a ResNet are cut points, the inside of
a residual block is not, nor the point between a transformer block's attention and its MLP
(see :func:`_block_boundaries`). An exit reads a CNN's (C, H, W) map or a transformer's token
sequence (see :mod:`shallowdeep.layouts`). Exits are placed at cut points, either named by the user
(a module name of the model, or an fx node name) or chosen automatically as the points whose
cumulative FLOPs are closest to the given fractions of the whole network's FLOPs.
"""

from __future__ import annotations

import re
import warnings
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from .errors import UserError, first_line
from .eval_mode import eval_mode
from .exit_plan import ExitPlan
from .flops import count_flops, flop_counter
from .fx_split import CutPoint, cut_indices, graph_fingerprint, split_graph, trace
from .heads import GeometricEnsemble, ICDesign, make_heads
from .layouts import exit_input
from .mode_graphs import ModeSegment, keep_train_mode
from .model_spec import PAPER_FRACTIONS, check_input_size
from .models.base import StagedNet
from .sdn import SDN
from .trace_options import TraceOptions

MAX_AUTO_FRACTION = 0.97
FAR_FROM_FRACTION = 0.05  # an automatically placed exit further than this from its fraction of the cost is reported


def attach(
    model: nn.Module,
    input_shape: Sequence[int],
    num_classes: int,
    exits: Sequence[str] | None = None,
    fractions: Sequence[float] = PAPER_FRACTIONS,
    ic: ICDesign | str | Mapping[str, Any] | None = "paper",
    leaf_modules: Sequence[str | type] = (),
    autowrap_functions: Sequence[str | Callable] = (),
) -> SDN:
    """Return an SDN built from ``model`` with an internal classifier at each exit.

    ``ic`` chooses the heads' design: ``"paper"`` (the SDN paper's IC), ``"conv"`` or ``"ztw"``
    (see :mod:`shallowdeep.heads`), or an :class:`~shallowdeep.heads.ICDesign` with its settings.
    Every exit's FLOPs include the heads on the way to it.

    ``exits=[]`` gives an SDN of one segment and no IC: the plain CNN, trained and evaluated
    by the same code.

    ``exits`` names the points whose output feeds an IC (module names of ``model`` or fx node
    names, see :func:`cut_points`); when None, one exit is placed at the cut point closest to each
    fraction of the network's FLOPs (for the built-in backbones, only between two blocks of their
    ``stages``, as in the paper; any other model, ``stages`` or not, at any cut point). The SDN
    shares ``model``'s parameters, and its final output equals ``model(x)`` exactly, in train mode too
    from the same random seed (see :mod:`shallowdeep.mode_graphs`).

    ``leaf_modules`` (classes, or their names) and ``autowrap_functions`` (functions, or their names) are traced
    as one call each, for code torch.fx cannot trace (see :mod:`shallowdeep.trace_options`).
    """
    tracing = TraceOptions.of(leaf_modules, autowrap_functions)
    return attach_planned(model, input_shape, num_classes, exits, fractions, ic, tracing)[0]


def attach_planned(model: nn.Module, input_shape: Sequence[int], num_classes: int,
                   exits: Sequence[str] | None = None, fractions: Sequence[float] = PAPER_FRACTIONS,
                   ic: ICDesign | str | Mapping[str, Any] | None = "paper", tracing: TraceOptions = TraceOptions(),
                   plan: ExitPlan | None = None) -> tuple[SDN, ExitPlan]:
    """:func:`attach` with ``tracing``, and what it found (see :mod:`shallowdeep.exit_plan`). Given the ``plan`` an
    earlier call made for the same settings, the model is traced once (twice when its train-mode code differs) and
    nothing else is measured; ``exits`` and ``fractions`` are then the plan's. A plan for another graph than the
    model's trace now is not used."""
    check_input_size(input_shape)
    design = ICDesign.parse(ic)
    with eval_mode(model):
        gm = trace(model, tracing)
    fingerprint = graph_fingerprint(gm)
    fresh = plan is None or plan.graph != fingerprint or not (
        {p.index for p in plan.exits} <= set(cut_indices(list(gm.graph.nodes))))
    if fresh:
        chosen, total_flops = _choose_exits(model, gm, input_shape, num_classes, exits, fractions)
    else:
        chosen, total_flops = list(plan.exits), plan.backbone_flops
    segments = split_graph(gm, [p.index for p in chosen])
    if fresh or plan.train_graph:
        segments = keep_train_mode(model, gm, chosen, segments, tracing)
    device = next(model.parameters(), torch.zeros(())).device
    heads = [h.to(device) for h in make_heads(design, [p.shape for p in chosen], num_classes)]
    if fresh:
        head_flops = [_head_flops(h, p.shape, num_classes, device) for h, p in zip(heads, chosen)]
        exit_flops = [p.flops + sum(head_flops[: i + 1]) for i, p in enumerate(chosen)]
        exit_flops.append(total_flops + sum(head_flops))
        plan = ExitPlan(fingerprint, tuple(chosen), tuple(exit_flops), total_flops,
                        any(isinstance(s, ModeSegment) for s in segments))
    ensemble = GeometricEnsemble(len(heads), num_classes).to(device) if design.ensembles and heads else None
    net = SDN(segments, heads, [p.name for p in chosen], plan.exit_flops, total_flops, ensemble, design)
    return net, plan


def _choose_exits(model: nn.Module, gm: torch.fx.GraphModule, input_shape: Sequence[int], num_classes: int,
                  exits: Sequence[str] | None, fractions: Sequence[float]) -> tuple[list[CutPoint], int]:
    """The cut points of ``gm`` (``model`` traced) where the exits go, and the backbone's FLOPs; a one-line error
    unless the model returns one tensor of logits for ``num_classes`` classes."""
    points, total_flops = _measure(model, gm, input_shape)
    out_meta = next(n for n in gm.graph.nodes if n.op == "output").args[0]
    if not isinstance(out_meta, torch.fx.Node):
        raise UserError(f"the model returns {_returned(out_meta)}, not one tensor of logits [batch, {num_classes}] "
                        f"for the data set's {num_classes} classes")
    out_shape = tuple(getattr(out_meta.meta.get("tensor_meta"), "shape", ()))
    if len(out_shape) != 2 or out_shape[1] != num_classes:
        raise UserError(f"the model's output has shape {list(out_shape)} per batch, not [batch, {num_classes}] "
                        f"for the data set's {num_classes} classes")
    if exits is not None:
        return _resolve_exits(gm, points, exits), total_flops
    if isinstance(model, StagedNet):
        points = [p for p in points if re.fullmatch(r"stages\.\d+", p.name)]  # between blocks, as in the paper
    chosen = place_exits(points, total_flops, fractions)
    for note in placement_notes(chosen, total_flops, fractions):
        warnings.warn(note, stacklevel=4)
    return chosen, total_flops


def _returned(value: Any) -> str:
    """What a traced model returns, when not one tensor: 'a dict (keys 'out', 'aux')', 'a tuple of 2 values'."""
    if isinstance(value, dict):
        return f"a dict (keys {', '.join(repr(k) for k in value)})"
    if isinstance(value, (tuple, list)):
        return f"a {'tuple' if isinstance(value, tuple) else 'list'} of {len(value)} values"
    return repr(value)


def heads_flops(shapes: Sequence[Sequence[int]], num_classes: int,
                ic: ICDesign | str | Mapping[str, Any] | None = "paper") -> int:
    """FLOPs per image of all the ICs of design ``ic``, one reading each of ``shapes`` (in exit order), together:
    what they add to the backbone's cost."""
    shapes = [tuple(s) for s in shapes]
    heads = make_heads(ICDesign.parse(ic), shapes, num_classes)
    return sum(_head_flops(h, s, num_classes, torch.device("cpu")) for h, s in zip(heads, shapes))


def _head_flops(head: nn.Module, shape: Sequence[int], num_classes: int, device: torch.device) -> int:
    """FLOPs per image of one head (eval mode), the cascaded logits it reads included."""
    with eval_mode(head):
        prev = torch.zeros(1, num_classes, device=device) if head.cascade_classes else None
        return count_flops(lambda x: head(x, prev), torch.zeros(1, *shape, device=device))


def analyse(model: nn.Module, input_shape: Sequence[int], tracing: TraceOptions = TraceOptions()
            ) -> tuple[torch.fx.GraphModule, list[CutPoint], int]:
    """Trace ``model`` (with ``tracing``), find its cut points with their shapes and cumulative FLOPs, and its total
    FLOPs."""
    check_input_size(input_shape)
    with eval_mode(model):
        gm = trace(model, tracing)
    return (gm, *_measure(model, gm, input_shape))


def _measure(model: nn.Module, gm: torch.fx.GraphModule, input_shape: Sequence[int]) -> tuple[list[CutPoint], int]:
    """The cut points of ``gm`` (``model`` traced in eval mode) with their shapes, layouts and cumulative FLOPs, and
    the total FLOPs: one run of the graph node by node on a zero image (in eval mode)."""
    with eval_mode(model), torch.no_grad():
        device = next(model.parameters(), torch.zeros(())).device
        example = torch.zeros(1, *input_shape, device=device)
        cumulative = _shapes_and_cumulative_flops(gm, example)
        nodes = list(gm.graph.nodes)
        names = _module_output_names(nodes)
        modules = dict(gm.named_modules())
        points = []
        for i in _block_boundaries(nodes, cut_indices(nodes)):
            read = exit_input(nodes[i], modules)
            if read is not None:
                points.append(CutPoint(i, names.get(nodes[i].name, nodes[i].name), read[0], cumulative[i], read[1]))
        points = _one_point_per_value(gm, example, points)
    return points, cumulative[-1]


def _block_boundaries(nodes: list[torch.fx.Node], cuts: Sequence[int]) -> list[int]:
    """The ``cuts`` that do not split a block between two of its residual branches.

    A cut lies inside a block when a module computes it without returning it (the innermost such module is
    the block). Where the block's own forward joins a skip connection (adds or concatenates a value from further
    back) both before and after the cut, the cut lies between two residual branches: in a transformer block,
    between the attention and the MLP (pre-norm or post-norm). No exit goes there, in any model, whatever its
    names. A CNN's residual block joins one skip connection, so a cut after its add stays; a stage joins none
    itself (its blocks do), so the cuts between its blocks stay. (The attention's inside is never a cut: the
    block's input is still needed there.)
    """
    last = _last_node_of_modules(nodes)
    owner = [(_enclosing_modules(n) or [None])[-1] for n in nodes]  # the module whose own forward computes it
    skips = _skip_connections(nodes)
    kept = []
    for i in cuts:
        block = next((m for m in reversed(_enclosing_modules(nodes[i])) if last[m] != i), None)
        joined = [(start, end) for start, end in skips if owner[end] == block] if block else []
        if not (any(end <= i for _, end in joined) and any(start >= i for start, _ in joined)):
            kept.append(i)
    return kept


def _enclosing_modules(node: torch.fx.Node) -> list[str]:
    """The modules whose forward computes ``node``, outermost first (for a module call, not that module)."""
    paths = _module_stack_paths(node)
    return paths[:-1] if node.op == "call_module" and paths and paths[-1] == node.target else paths


def _skip_connections(nodes: list[torch.fx.Node]) -> list[tuple[int, int]]:
    """(from, to) positions of each value read two or more nodes after it is computed (parameters aside)."""
    position = {n: i for i, n in enumerate(nodes)}
    return [(position[a], j) for j, node in enumerate(nodes) for a in node.all_input_nodes
            if a.op != "get_attr" and j - position[a] > 1]


def _one_point_per_value(gm: torch.fx.GraphModule, example: torch.Tensor, points: list[CutPoint]) -> list[CutPoint]:
    """``points`` less each whose value is the very tensor of the next point, passed on by an identity module or
    eval-mode dropout, or overwritten by an in-place activation: each value is listed once, under the later
    name (a module's, as a rule)."""
    at = {p.index for p in points}
    index = {n: i for i, n in enumerate(gm.graph.nodes)}
    repeated: set[int] = set()
    previous: list[Any] = []  # the last point's index and value

    class _Watch(torch.fx.Interpreter):
        def run_node(self, n: torch.fx.Node):  # noqa: ANN201 - fx signature
            value = super().run_node(n)
            if index[n] in at:
                if previous and previous[1] is value:
                    repeated.add(previous[0])
                previous[:] = [index[n], value]
            return value

    _Watch(gm).run(example)
    return [p for p in points if p.index not in repeated]


def cut_points(model: nn.Module, input_shape: Sequence[int], tracing: TraceOptions = TraceOptions()
               ) -> list[CutPoint]:
    """The points of ``model`` (traced with ``tracing``) where an exit can be attached, in depth order."""
    return analyse(model, input_shape, tracing)[1]


def place_exits(points: Sequence[CutPoint], total_flops: int, fractions: Sequence[float]) -> list[CutPoint]:
    """The distinct cut points closest in FLOPs to each fraction of ``total_flops``, in depth order.

    Among points of equal cost the deepest is taken (the output of a block rather than of the
    convolution inside it). Points past ``MAX_AUTO_FRACTION`` of the cost (after the last
    convolution, say) are never chosen: an IC there could save nothing.
    """
    usable = [p for p in points if 0 < p.flops < MAX_AUTO_FRACTION * total_flops]
    if not usable:
        raise UserError("the model has no point where it can be split before its last layer")
    chosen: dict[int, CutPoint] = {}
    for f in fractions:
        if not 0 < f < 1:
            raise UserError(f"exit fraction {f} must lie strictly between 0 and 1")
        best = min(usable, key=lambda p: (abs(p.flops - f * total_flops), -p.index))
        chosen[best.index] = best
    return [chosen[i] for i in sorted(chosen)]


def placement_notes(chosen: Sequence[CutPoint], total_flops: int, fractions: Sequence[float],
                    tolerance: float = FAR_FROM_FRACTION) -> list[str]:
    """One line for each way placement by FLOPs fell short: fewer distinct cut points than fractions, or
    an exit more than ``tolerance`` of the cost away from its fraction."""
    notes = []
    if len(chosen) < len(fractions):
        notes.append(f"only {len(chosen)} distinct cut points are nearest to the {len(fractions)} exit fractions, "
                     f"so the SDN has {len(chosen)} ICs; see `shallowdeep exits` and choose --exits yourself")
    for f in fractions:
        nearest = min(chosen, key=lambda p: abs(p.flops - f * total_flops))
        share = nearest.flops / total_flops
        if abs(share - f) > tolerance:
            notes.append(f"the exit meant for {100 * f:.0f} % of the cost is at {100 * share:.1f} % ({nearest.name}): "
                         "no cut point lies nearer")
    return notes


def _resolve_exits(gm: torch.fx.GraphModule, points: Sequence[CutPoint], exits: Sequence[str]) -> list[CutPoint]:
    nodes = list(gm.graph.nodes)
    by_index = {p.index: p for p in points}
    modules = dict(gm.named_modules())
    last_node_of = _last_node_of_modules(nodes)
    chosen = []
    for name in exits:
        if name in last_node_of:
            index = last_node_of[name]
        else:
            index = next((i for i, n in enumerate(nodes) if n.name == name), None)
            if index is None and name not in modules:
                raise UserError(f"exit '{name}' is neither a module nor a graph node of the model")
            if index is None:
                raise UserError(f"exit '{name}' is never called in the model's forward")
        if index not in by_index:
            raise UserError(
                f"exit '{name}' is not a point where the model can be split into a sequence "
                "(a value computed before it, such as a skip connection, is used after it, it lies between two "
                "residual branches of a block, or its output is neither a feature map nor tokens); choose a block "
                "output instead"
            )
        if by_index[index] in chosen:
            raise UserError(f"exit '{name}' names the same point as another exit")
        chosen.append(by_index[index])
    return sorted(chosen, key=lambda p: p.index)


def _module_stack_paths(node: torch.fx.Node) -> list[str]:
    stack = node.meta.get("nn_module_stack") or {}
    return [v[0] if isinstance(v, tuple) else str(k) for k, v in stack.items()]


def _last_node_of_modules(nodes: list[torch.fx.Node]) -> dict[str, int]:
    """For every module called in the graph, the index of the last node computed inside it."""
    last: dict[str, int] = {}
    for i, node in enumerate(nodes):
        paths = _module_stack_paths(node)
        if node.op == "call_module":
            paths.append(str(node.target))
        for p in paths:
            last[p] = i
    return last


def _module_output_names(nodes: list[torch.fx.Node]) -> dict[str, str]:
    """A module name for each node that is the output of a module: the outermost such module
    (a residual block rather than the ReLU that ends it)."""
    names: dict[str, str] = {}
    for path, i in _last_node_of_modules(nodes).items():
        current = names.get(nodes[i].name)
        if path and (current is None or path.count(".") < current.count(".")):
            names[nodes[i].name] = path
    return names


class _ModelError(BaseException):
    """An error of the model's own code at ``node``, carried past ``ShapeProp`` (which would print its
    traceback: it catches every ``Exception``)."""

    def __init__(self, node: torch.fx.Node, error: Exception) -> None:
        super().__init__(node, error)
        self.node, self.error = node, error


class _CarryErrors(torch.fx.Interpreter):
    """An interpreter whose nodes raise :class:`_ModelError` instead of the model's errors."""

    def run_node(self, n: torch.fx.Node):  # noqa: ANN201 - fx signature
        try:
            return super().run_node(n)
        except Exception as exc:
            raise _ModelError(n, exc) from exc


def _shapes_and_cumulative_flops(gm: torch.fx.GraphModule, example: torch.Tensor) -> list[int]:
    """Run the graph once node by node: record each node's shape (``tensor_meta``) and return the
    cumulative FLOPs per image after each node. The model failing on ``example`` is a one-line error."""
    totals: list[int] = []
    batch = example.shape[0]

    class _Counter(ShapeProp, _CarryErrors):
        def run_node(self, n: torch.fx.Node):  # noqa: ANN201 - fx signature
            result = super().run_node(n)
            totals.append(counter.get_total_flops() // batch)
            return result

    try:
        with flop_counter() as counter:
            _Counter(gm).propagate(example)
    except _ModelError as failed:
        node = failed.node
        where = f"layer '{node.target}'" if node.op == "call_module" else f"step '{node.name}'"
        raise UserError(f"the backbone cannot run on inputs of shape {tuple(example.shape[1:])}: {where} "
                        f"failed with {first_line(failed.error)}{_channel_hint(failed.error, example.shape[1])}"
                        ) from failed.error
    return totals


def _channel_hint(error: Exception, channels: int) -> str:
    """How to read an image folder for a network that takes RGB images given grey ones (or the reverse)."""
    found = re.search(r"to have (\d+) channels, but got (\d+) channels", str(error))
    if found and int(found[2]) == channels and found[1] in ("1", "3"):
        return f"; the network takes {found[1]}-channel images: read the data with --channels {found[1]}"
    return ""


