"""Early exit over a stream of batches, with every stage run on full batches.

The per-batch engine (:func:`~shallowdeep.exits.early_exit`) runs each stage on whoever is left of one
batch, so late stages run on small batches, which a CPU or GPU computes less efficiently per image. Over
many batches (a data set, a folder, a queue of requests) :func:`early_exit_stream` instead keeps the
samples waiting at each stage and runs a stage only once ``batch_size`` of them are waiting (the rest run
when the stream ends). Every sample gets the same answer as from the per-batch engine; only the grouping
of the work changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable

import torch

from ..errors import UserError
from .engine import Answer, rows, stage_decision
from .policies import ExitPolicy, resolve_policy

if TYPE_CHECKING:
    from ..sdn import SDN


@dataclass
class _Waiting:
    """Samples waiting to run a stage: their input map, positions in the stream, the previous IC's logits
    (cascading heads), every IC's log-probabilities so far (ensembles) and the policy's state."""

    h: torch.Tensor
    ids: torch.Tensor
    raw: torch.Tensor | None
    log_probs: list[torch.Tensor]
    state: tuple[torch.Tensor, ...]

    def __len__(self) -> int:
        return self.ids.shape[0]

    def take(self, index: torch.Tensor) -> "_Waiting":
        """The samples at ``index`` (rows of every field)."""
        return _Waiting(rows(self.h, index), self.ids.index_select(0, index),
                        None if self.raw is None else self.raw.index_select(0, index),
                        [p.index_select(0, index) for p in self.log_probs],
                        tuple(s.index_select(0, index) for s in self.state))

    def split(self, n: int) -> tuple["_Waiting", "_Waiting"]:
        """The first ``n`` samples and the rest (views, no copy)."""
        return self._part(slice(0, n)), self._part(slice(n, None))

    def _part(self, part: slice) -> "_Waiting":
        return _Waiting(self.h[part], self.ids[part], None if self.raw is None else self.raw[part],
                        [p[part] for p in self.log_probs], tuple(s[part] for s in self.state))

    @staticmethod
    def concat(parts: list["_Waiting"]) -> "_Waiting":
        if len(parts) == 1:
            return parts[0]
        first = parts[0]
        return _Waiting(_cat([p.h for p in parts]), torch.cat([p.ids for p in parts]),
                        None if first.raw is None else torch.cat([p.raw for p in parts]),
                        [torch.cat(ps) for ps in zip(*(p.log_probs for p in parts))],
                        tuple(torch.cat(ss) for ss in zip(*(p.state for p in parts))))


@dataclass
class _Answers:
    """Answers of the samples that left, gathered in the order they left."""

    ids: list[torch.Tensor] = field(default_factory=list)
    predictions: list[torch.Tensor] = field(default_factory=list)
    exits: list[torch.Tensor] = field(default_factory=list)

    def add(self, ids: torch.Tensor, predictions: torch.Tensor, exit_index: int) -> None:
        self.ids.append(ids)
        self.predictions.append(predictions)
        self.exits.append(torch.full_like(ids, exit_index))

    def in_stream_order(self, net: SDN, n: int, device: torch.device) -> Answer:
        predictions = torch.empty(n, dtype=torch.long, device=device)
        exits = torch.empty(n, dtype=torch.long, device=device)
        if self.ids:
            ids = torch.cat(self.ids)
            predictions[ids], exits[ids] = torch.cat(self.predictions), torch.cat(self.exits)
        flops = torch.tensor(net.exit_flops, dtype=torch.long, device=device)
        return predictions, exits, flops[exits]


@torch.inference_mode()
def early_exit_stream(
    net: SDN,
    batches: Iterable[torch.Tensor],
    threshold: float | None = None,
    policy: ExitPolicy | str | None = None,
    batch_size: int | None = None,
) -> Answer:
    """Classify every sample of ``batches`` with early exits, each stage running on ``batch_size`` samples
    (default: the first batch's size) until the stream ends.

    ``threshold`` and ``policy`` are those of :func:`~shallowdeep.exits.early_exit`. Returns, per sample in
    stream order: the predicted class, the exit it left at and the FLOPs it cost.
    """
    rule = resolve_policy(threshold, policy)
    if net.training:
        raise UserError("early exit needs the SDN in eval mode (call net.eval())")
    if batch_size is not None and batch_size < 1:
        raise UserError(f"batch size must be at least 1, got {batch_size}")
    waiting: list[list[_Waiting]] = [[] for _ in net.segments]
    answers, total, device = _Answers(), 0, None
    for x in batches:
        if x.shape[0] == 0:
            continue
        device, batch_size = x.device, batch_size or x.shape[0]
        ids = torch.arange(total, total + x.shape[0], device=device)
        waiting[0].append(_Waiting(x, ids, None, [], rule.start(x.shape[0], device)))
        total += x.shape[0]
        _run_full_stages(net, rule, waiting, answers, batch_size)
    if device is None:
        raise UserError("early exit got no samples")
    _run_full_stages(net, rule, waiting, answers, batch_size, flush=True)
    return answers.in_stream_order(net, total, device)


def _run_full_stages(net: SDN, rule: ExitPolicy, waiting: list[list[_Waiting]], answers: _Answers,
                     batch_size: int, flush: bool = False) -> None:
    """Run every stage, shallowest first, on each full batch of its waiting samples (on all of them when
    ``flush``); survivors wait at the next stage."""
    for index, queue in enumerate(waiting):
        while queue and (flush or sum(map(len, queue)) >= batch_size):
            group = _Waiting.concat(queue)
            queue.clear()
            if len(group) > batch_size:
                group, rest = group.split(batch_size)
                queue.append(rest)
            survivors = _run_stage(net, rule, index, group, answers)
            if survivors is not None:
                waiting[index + 1].append(survivors)


def _run_stage(net: SDN, rule: ExitPolicy, index: int, group: _Waiting, answers: _Answers) -> _Waiting | None:
    """Run stage ``index`` on ``group``; record those that leave, return those that go on (None: nobody)."""
    if index == len(net.ics):
        answers.add(group.ids, net.segments[-1](group.h).argmax(dim=1), index)
        return None
    h, raw, logits, log_probs, go_on, state = stage_decision(net, rule, index, group.h, group.raw,
                                                             group.log_probs, group.state)
    keep = torch.nonzero(go_on).squeeze(1)
    if keep.shape[0] < len(group):
        leave = torch.nonzero(~go_on).squeeze(1)
        answers.add(group.ids.index_select(0, leave), logits.index_select(0, leave).argmax(dim=1), index)
    if keep.shape[0] == 0:
        return None
    cascades = raw if any(ic.cascade_classes for ic in net.ics) else None
    survivors = _Waiting(h, group.ids, cascades, log_probs, state)
    return survivors if keep.shape[0] == len(group) else survivors.take(keep)


def _cat(maps: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate feature maps along the batch, keeping channels-last maps channels-last."""
    out = torch.cat(maps)
    first = maps[0]
    if first.dim() == 4 and not first.is_contiguous() and first.is_contiguous(memory_format=torch.channels_last):
        out = out.contiguous(memory_format=torch.channels_last)
    return out
