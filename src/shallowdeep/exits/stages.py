"""What both early-exit engines share: the record of the samples still running, and one stage's decision.

The per-batch engine (:mod:`.engine`) carries one :class:`Running` record through the stages of one batch; the
streaming engine (:mod:`.stream`) keeps one per group of samples waiting at each stage. :func:`stage_decision`
runs one stage on a record and says who goes on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import torch

from .policies import ExitPolicy, State

if TYPE_CHECKING:
    from ..sdn import SDN

Answer = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # per sample: predicted class, exit index, FLOPs


@dataclass
class Running:
    """Samples on their way through the stages, one row each in every field.

    ``h``: the map the next stage reads; ``ids``: the samples' positions in the input (None: all of it, in order);
    ``raw``: the last IC's logits, kept only when the next IC cascades (reads them); ``log_probs``: every IC's
    log-probabilities so far (with an ensemble); ``state``: the policy's per-sample state.
    """

    h: torch.Tensor
    ids: torch.Tensor | None
    raw: torch.Tensor | None
    log_probs: list[torch.Tensor]
    state: State

    def __len__(self) -> int:
        return self.h.shape[0]

    def take(self, index: torch.Tensor) -> Running:
        """The samples at ``index`` (positions in this record)."""
        return Running(_rows(self.h, index), index if self.ids is None else self.ids.index_select(0, index),
                       None if self.raw is None else self.raw.index_select(0, index),
                       [p.index_select(0, index) for p in self.log_probs],
                       tuple(s.index_select(0, index) for s in self.state))

    def part(self, part: slice) -> Running:
        """The samples in ``part`` (views, no copy)."""
        return Running(self.h[part], None if self.ids is None else self.ids[part],
                       None if self.raw is None else self.raw[part],
                       [p[part] for p in self.log_probs], tuple(s[part] for s in self.state))

    @staticmethod
    def concat(records: list[Running]) -> Running:
        """One record of the samples of ``records`` in order (each with ``ids``)."""
        if len(records) == 1:
            return records[0]
        first = records[0]
        return Running(_cat([r.h for r in records]), torch.cat([r.ids for r in records]),
                       None if first.raw is None else torch.cat([r.raw for r in records]),
                       [torch.cat(ps) for ps in zip(*(r.log_probs for r in records))],
                       tuple(torch.cat(ss) for ss in zip(*(r.state for r in records))))


class StageDecision(NamedTuple):
    """One stage's outcome on a :class:`Running` record."""

    running: Running  # the same samples after the stage: its map, its IC's logits, the policy's new state
    logits: torch.Tensor  # what the exit answers (the IC's logits, or the ensemble's)
    go_on: torch.Tensor  # bool per sample: True for those that go on to the next stage


def stage_decision(net: SDN, rule: ExitPolicy, index: int, running: Running) -> StageDecision:
    """Stage ``index`` on ``running``: segment ``index`` maps its map to IC ``index``'s input, the IC reads it (and
    the previous IC's logits, when it cascades), the ensemble (if any) combines it with every earlier IC's
    log-probabilities, and the policy decides who goes on."""
    h = net.segments[index](running.h)
    raw = net.ics[index](h, running.raw)
    logits, log_probs = raw, running.log_probs
    if net.ensemble is not None:
        log_probs = [*log_probs, torch.log_softmax(raw.float(), dim=1)]
        logits = net.ensemble.exit_logits(index, log_probs)
    go_on, state = rule.step(logits, running.state, index)
    cascades = index + 1 < len(net.ics) and net.ics[index + 1].cascade_classes
    return StageDecision(Running(h, running.ids, raw if cascades else None, log_probs, state), logits, go_on)


def _rows(h: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Rows ``keep`` of the feature map ``h``, in its memory format (``index_select`` alone would make a
    channels-last map contiguous, slowly)."""
    if h.dim() == 4 and not h.is_contiguous() and h.is_contiguous(memory_format=torch.channels_last):
        return h.permute(0, 2, 3, 1).index_select(0, keep).permute(0, 3, 1, 2)
    return h.index_select(0, keep)


def _cat(maps: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate feature maps along the batch, keeping channels-last maps channels-last."""
    out = torch.cat(maps)
    first = maps[0]
    if first.dim() == 4 and not first.is_contiguous() and first.is_contiguous(memory_format=torch.channels_last):
        out = out.contiguous(memory_format=torch.channels_last)
    return out
