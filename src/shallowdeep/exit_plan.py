"""What attaching exits found about a backbone, kept with a run so that loading the run does not find it again.

Attaching exits (:mod:`shallowdeep.surgery`) traces the backbone, runs it node by node for every value's shape
and the FLOPs so far, reads the layouts, places the exits, counts the heads' FLOPs, and traces the backbone in
train mode too. An :class:`ExitPlan` holds the outcome: the exits' cut points (graph node, name, shape, layout,
FLOPs so far), every exit's cost with its heads, the backbone's cost, whether some segment keeps train-mode code
of its own, and a fingerprint of the traced graph. An SDN built again from its plan costs one trace: its segments
are cut at the recorded nodes and its heads made for the recorded shapes (a backbone whose forward checks
``self.training`` is traced in train mode as well).

A spec carries its plan in ``analysis`` (saved in ``config.json`` under ``model``), with a version and a digest of
the spec it was made for. A plan of another version, made for another spec (classes, input shape, exits, heads,
backbone, tracing options), or for another graph than the backbone's trace now (another torch, an edited backbone
file) is not used: the backbone is analysed again, as for a run made before plans were kept. A damaged plan is a
one-line error.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from typing import Any, Mapping

from .errors import UserError
from .fx_split import CutPoint
from .layouts import CHANNELS_LAST_MAP, FEATURE_MAP, TOKENS
from .model_spec import ModelSpec

PLAN_VERSION = 1


@dataclass(frozen=True)
class ExitPlan:
    """Where a backbone's exits go in its traced graph, and what they cost (see the module docstring)."""

    graph: str  # fx_split.graph_fingerprint of the eval-mode graph
    exits: tuple[CutPoint, ...]
    exit_flops: tuple[int, ...]  # per image, to each exit with the heads on the way, the final head last
    backbone_flops: int
    train_graph: bool  # some segment runs code of its own in train mode (see shallowdeep.mode_graphs)

    def to_dict(self) -> dict[str, Any]:
        return {"graph": self.graph,
                "exits": [{"node": p.index, "name": p.name, "shape": list(p.shape), "layout": p.layout,
                           "flops": p.flops} for p in self.exits],
                "exit_flops": list(self.exit_flops), "backbone_flops": self.backbone_flops,
                "train_graph": self.train_graph}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ExitPlan":
        """The plan ``d`` describes; a ``ValueError`` naming what is wrong when it is damaged."""
        exits = d.get("exits")
        _require(isinstance(d.get("graph"), str), "graph")
        _require(isinstance(exits, list) and all(isinstance(e, Mapping) for e in exits), "exits")
        points = tuple(_cut_point(e) for e in exits)
        _require(_counts(d.get("exit_flops"), len(points) + 1), "exit_flops")
        _require(_counts([d.get("backbone_flops")], 1), "backbone_flops")
        _require(isinstance(d.get("train_graph"), bool), "train_graph")
        _require([p.index for p in points] == sorted({p.index for p in points}), "exits' nodes")
        return cls(d["graph"], points, tuple(d["exit_flops"]), d["backbone_flops"], d["train_graph"])


def stored_plan(spec: ModelSpec) -> ExitPlan | None:
    """The plan ``spec`` carries, when it was made for this spec by this version; else None."""
    record = spec.analysis
    if record is None or record.get("version") != PLAN_VERSION or record.get("spec") != spec_digest(spec):
        return None
    try:
        return ExitPlan.from_dict(record)
    except ValueError as exc:
        raise UserError(f"the model's stored analysis is damaged ({exc}); remove 'analysis' from the run's "
                        "config.json to analyse the model again") from None


def with_plan(spec: ModelSpec, plan: ExitPlan) -> ModelSpec:
    """``spec`` carrying ``plan``, made for it."""
    return replace(spec, analysis={"version": PLAN_VERSION, "spec": spec_digest(spec), **plan.to_dict()})


def spec_digest(spec: ModelSpec) -> str:
    """A digest of what the plan depends on in ``spec``: all it saves but the backbone file's path (a run keeps a
    copy under another name; its code is checked by the run) and the plan itself."""
    described = {k: v for k, v in spec.to_dict().items() if k not in ("factory", "analysis")}
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]


def _cut_point(e: Mapping[str, Any]) -> CutPoint:
    shape = e.get("shape")
    _require(_counts([e.get("node")], 1), "an exit's node")
    _require(isinstance(e.get("name"), str) and e["name"], "an exit's name")
    _require(isinstance(shape, list) and len(shape) in (2, 3) and _counts(shape, len(shape), minimum=1),
             "an exit's shape")
    _require(e.get("layout") in (FEATURE_MAP, TOKENS, CHANNELS_LAST_MAP), "an exit's layout")
    _require(_counts([e.get("flops")], 1), "an exit's flops")
    return CutPoint(e["node"], e["name"], tuple(shape), e["flops"], e["layout"])


def _counts(values: Any, length: int, minimum: int = 0) -> bool:
    """Whether ``values`` is a list of ``length`` whole numbers >= ``minimum``."""
    return isinstance(values, list) and len(values) == length and all(
        type(v) is int and v >= minimum for v in values)


def _require(condition: bool, what: str) -> None:
    if not condition:
        raise ValueError(f"{what}: missing or malformed")
