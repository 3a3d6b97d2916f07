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
from .policies import ExitPolicy, resolve_policy
from .stages import Answer, Running, stage_decision

if TYPE_CHECKING:
    from ..sdn import SDN


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
    waiting: list[list[Running]] = [[] for _ in net.segments]
    answers, total, device = _Answers(), 0, None
    for x in batches:
        if x.shape[0] == 0:
            continue
        device, batch_size = x.device, batch_size or x.shape[0]
        ids = torch.arange(total, total + x.shape[0], device=device)
        waiting[0].append(Running(x, ids, None, [], rule.start(x.shape[0], device)))
        total += x.shape[0]
        _run_full_stages(net, rule, waiting, answers, batch_size)
    if device is None:
        raise UserError("early exit got no samples")
    _run_full_stages(net, rule, waiting, answers, batch_size, flush=True)
    return answers.in_stream_order(net, total, device)


def _run_full_stages(net: SDN, rule: ExitPolicy, waiting: list[list[Running]], answers: _Answers,
                     batch_size: int, flush: bool = False) -> None:
    """Run every stage, shallowest first, on each full batch of its waiting samples (on all of them when
    ``flush``); survivors wait at the next stage."""
    for index, queue in enumerate(waiting):
        while queue and (flush or sum(map(len, queue)) >= batch_size):
            group = Running.concat(queue)
            queue.clear()
            if len(group) > batch_size:
                group, rest = group.part(slice(0, batch_size)), group.part(slice(batch_size, None))
                queue.append(rest)
            survivors = _run_stage(net, rule, index, group, answers)
            if survivors is not None:
                waiting[index + 1].append(survivors)


def _run_stage(net: SDN, rule: ExitPolicy, index: int, group: Running, answers: _Answers) -> Running | None:
    """Run stage ``index`` on ``group``; record those that leave, return those that go on (None: nobody)."""
    if index == len(net.ics):
        answers.add(group.ids, net.segments[-1](group.h).argmax(dim=1), index)
        return None
    survivors, logits, go_on = stage_decision(net, rule, index, group)
    keep = torch.nonzero(go_on).squeeze(1)
    if keep.shape[0] < len(group):
        leave = torch.nonzero(~go_on).squeeze(1)
        answers.add(group.ids.index_select(0, leave), logits.index_select(0, leave).argmax(dim=1), index)
    if keep.shape[0] == 0:
        return None
    return survivors if keep.shape[0] == len(group) else survivors.take(keep)

