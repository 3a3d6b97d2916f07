"""An SDN's stages as modules with the export folder's inputs and outputs, and their ONNX export.

Stage k runs backbone segment k, then IC k (every stage but the last) and, for Zero Time Waste, the ensemble,
so that its ``logits`` output is what exit k answers. The names follow :mod:`shallowdeep.runtime.manifest`:
``h`` in, ``h_next`` out; ``raw`` and ``log_probs`` in and ``raw_next`` and ``log_probs_next`` out where the
heads cascade or ensemble.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from ..errors import UserError, first_line
from ..sdn import SDN
from .blocked_layout import keep_blocked

OPSET = 18


class StageModule(nn.Module):
    """Stage ``index`` of ``net`` (see the module docstring), sharing ``net``'s parameters."""

    def __init__(self, net: SDN, index: int) -> None:
        super().__init__()
        self.index, self.final = index, index == len(net.ics)
        self.segment = net.segments[index]
        self.ic = None if self.final else net.ics[index]
        self.ensemble = None if self.final else net.ensemble
        following = index + 1 < len(net.ics)  # the next stage is an IC's
        self.reads_raw = not self.final and bool(self.ic.cascade_classes)
        self.passes_raw = following and bool(net.ics[index + 1].cascade_classes)
        self.reads_log_probs = self.ensemble is not None and index > 0
        self.passes_log_probs = self.ensemble is not None and following

    @property
    def input_names(self) -> list[str]:
        return ["h", *(["raw"] if self.reads_raw else []), *(["log_probs"] if self.reads_log_probs else [])]

    @property
    def output_names(self) -> list[str]:
        if self.final:
            return ["logits"]
        return ["h_next", "logits", *(["raw_next"] if self.passes_raw else []),
                *(["log_probs_next"] if self.passes_log_probs else [])]

    def forward(self, h: torch.Tensor, raw: torch.Tensor | None = None,
                log_probs: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        h = self.segment(h)
        if self.final:
            return (h,)
        raw = self.ic(h, raw)
        logits, out = raw, {"h_next": h, "logits": raw, "raw_next": raw}
        if self.ensemble is not None:
            log_p = torch.log_softmax(raw.float(), dim=1).unsqueeze(1)
            log_probs = torch.cat([log_probs, log_p], dim=1) if self.reads_log_probs else log_p
            logits = self.ensemble.exit_logits(self.index, log_probs.unbind(1))
            out.update(logits=logits, log_probs_next=log_probs)
        return tuple(out[name] for name in self.output_names)


def export_stage(stage: StageModule, example: dict[str, torch.Tensor], path: Path, what: str) -> onnx.ModelProto:
    """Write ``stage`` as an ONNX graph with a dynamic batch axis to ``path`` (checked by ``onnx.checker``, and
    rewritten for onnxruntime's blocked layout: see :mod:`.blocked_layout`), given
    an ``example`` of its inputs by name; a one-line error naming ``what`` (the stage) and, where the exporter
    names it, the operator it cannot export."""
    batch = torch.export.Dim("batch")
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(stage.eval(), (example["h"],), str(path),
                              kwargs={k: v for k, v in example.items() if k != "h"},
                              input_names=stage.input_names, output_names=stage.output_names,
                              dynamic_shapes={name: {0: batch} for name in example}, opset_version=OPSET,
                              dynamo=True, verbose=False, external_data=False)
        model = onnx.load(str(path))
        if keep_blocked(model):
            onnx.save(model, str(path))
        onnx.checker.check_model(model)
    except Exception as exc:  # the exporter raises many types; each becomes one line naming the stage
        raise UserError(f"{what} cannot be exported to ONNX: {_reason(exc)}") from None
    return model


def _reason(exc: Exception) -> str:
    """The operator the exporter could not convert, when its message names one, else the message's first line."""
    text = str(exc)
    found = re.findall(r"\b(aten::\w+|aten\.\w+(?:\.\w+)?|torch\.ops\.\w+\.\w+)", text)
    if found:
        return f"operator {found[0]} is not supported ({type(exc).__name__})"
    return first_line(exc)
