"""The export folder's contract: ``manifest.json``, written by :mod:`shallowdeep.export`, read by the runtime.

An export folder holds one ONNX graph per stage and this manifest::

    DIR/manifest.json      format tag, opset, input shape and normalisation, classes, exits with their
                           cumulative FLOPs, the stages' graphs and their inputs and outputs, the exit
                           policy with its threshold and where it came from, and, for an int8 export,
                           how its stages were quantised
    DIR/stage<k>.onnx      stage k: backbone segment k, then IC k (every stage but the last), then, for
                           Zero Time Waste, the ensemble: what exit k answers
    DIR/early_exit.onnx    the whole early exit for one image as one graph (ONNX ``If`` nodes), with the
                           manifest's policy and threshold as default inputs

Stage k maps input ``h`` (the previous stage's ``h_next``; the normalised image for stage 0) to ``h_next``
and ``logits`` (what exit k answers). Any other output ``NAME_next`` feeds the next stage's input ``NAME``:
ZTW's cascade (``raw``, IC k's own logits, read by IC k+1) and ensemble (``log_probs``, the log-softmax of
ICs 0..k, ``(batch, k+1, classes)``). Every axis but the first (the batch) is fixed.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..run_folder import EXPORT_FORMAT as FORMAT, EXPORT_MANIFEST as MANIFEST, is_export

FUSED_GRAPH = "early_exit.onnx"
NEXT = "_next"  # stage k's output NAME_next is stage k+1's input NAME
POLICY_NAMES = ("maxprob", "entropy", "patience", "maxprob-per-exit")


@dataclass(frozen=True)
class Stage:
    """One stage graph: its file in the export folder and the names of its inputs and outputs."""

    file: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class Policy:
    """The exit policy an export applies, with its threshold (one per IC for ``maxprob-per-exit``) and where the
    threshold came from (an early-exit result's key, calibration data and criterion, or an override)."""

    name: str
    threshold: float | tuple[float, ...]
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name not in POLICY_NAMES:
            raise UserError(f"unknown exit policy '{self.name}': choose one of {', '.join(POLICY_NAMES)}")
        per_exit = self.name == "maxprob-per-exit"
        values = self.threshold if per_exit and isinstance(self.threshold, (tuple, list)) else (self.threshold,)
        if per_exit != isinstance(self.threshold, (tuple, list)) or not all(_is_number(v) for v in values):
            kind = "a list of numbers, one per IC" if per_exit else "a number"
            raise UserError(f"the {self.name} threshold must be {kind}, got {self.threshold!r}")
        if self.name == "patience" and (self.threshold < 1 or self.threshold != int(self.threshold)):
            raise UserError(f"patience {self.threshold} must be a whole number of agreeing exits, at least 1")

    def keys(self, num_ics: int) -> list[float]:
        """The value each IC's score must reach for a sample to stop there (see :mod:`shallowdeep.runtime.policies`)."""
        if self.name == "maxprob-per-exit":
            if len(self.threshold) != num_ics:
                raise UserError(f"maxprob-per-exit has {len(self.threshold)} thresholds for {num_ics} ICs")
            return [float(q) for q in self.threshold]
        return [-float(self.threshold) if self.name == "entropy" else float(self.threshold)] * num_ics


@dataclass(frozen=True)
class Manifest:
    """Everything the runtime needs besides the graphs (see the module docstring)."""

    opset: int
    input_shape: tuple[int, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...]
    exit_names: tuple[str, ...]
    exit_flops: tuple[int, ...]
    backbone_flops: int
    stages: tuple[Stage, ...]
    policy: Policy
    ic_design: dict[str, Any] = field(default_factory=dict)
    ensemble: dict[str, Any] | None = None
    made_from: dict[str, Any] = field(default_factory=dict)
    quantisation: dict[str, Any] | None = None  # None: fp32 stages; else how they were quantised

    @property
    def num_ics(self) -> int:
        return len(self.stages) - 1

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["stages"] = [asdict(s) for s in self.stages]
        out["exits"] = [{"name": n, "flops": f} for n, f in zip(out.pop("exit_names"), out.pop("exit_flops"))]
        out["input"] = {"shape": out.pop("input_shape"), "mean": out.pop("mean"), "std": out.pop("std"),
                        "pixels": "uint8 images, or floats in [0, 1]; (x - mean) / std per channel"}
        return {"format": FORMAT, "fused_graph": FUSED_GRAPH, **out}


def read_manifest(folder: str | Path) -> Manifest:
    """The manifest of the export folder ``folder``; a one-line error when it is missing, damaged or edited
    into something that cannot be."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise UserError(f"{folder} is not an export folder: {MANIFEST} is missing (make one with shallowdeep export)")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"{path} is not valid JSON ({exc}); export the run again") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else None
        raise UserError(f"{path} is in format '{found}', which this version of shallowdeep does not read (it reads '{FORMAT}')")
    try:
        manifest = _parse(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{path} is damaged ({type(exc).__name__}: {exc}); export the run again") from None
    for stage in manifest.stages:
        if not (folder / stage.file).is_file() or Path(stage.file).name != stage.file:
            raise UserError(f"{path} names a stage graph {stage.file!r} that is not in {folder}; export the run again")
    return manifest


def _parse(data: dict[str, Any]) -> Manifest:
    stages = tuple(Stage(str(s["file"]), tuple(map(str, s["inputs"])), tuple(map(str, s["outputs"])))
                   for s in data["stages"])
    exits = data["exits"]
    raw = data["policy"]
    threshold = raw["threshold"]
    policy = Policy(str(raw["name"]), tuple(threshold) if isinstance(threshold, list) else threshold,
                    dict(raw.get("source") or {}))
    manifest = Manifest(
        opset=int(data["opset"]), input_shape=tuple(int(v) for v in data["input"]["shape"]),
        mean=tuple(float(v) for v in data["input"]["mean"]), std=tuple(float(v) for v in data["input"]["std"]),
        classes=tuple(map(str, data["classes"])), exit_names=tuple(str(e["name"]) for e in exits),
        exit_flops=tuple(int(e["flops"]) for e in exits), backbone_flops=int(data["backbone_flops"]),
        stages=stages, policy=policy, ic_design=dict(data.get("ic_design") or {}),
        ensemble=data.get("ensemble"), made_from=dict(data.get("made_from") or {}),
        quantisation=data.get("quantisation"))
    if not stages or len(exits) != len(stages):
        raise ValueError(f"{len(exits)} exits for {len(stages)} stages")
    if len(manifest.mean) != manifest.input_shape[0] or len(manifest.std) != manifest.input_shape[0]:
        raise ValueError("the normalisation does not have one mean and std per input channel")
    if not all(s > 0 for s in manifest.std):
        raise ValueError("a standard deviation is not positive")
    manifest.policy.keys(manifest.num_ics)  # per-exit thresholds: one per IC
    return manifest


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
