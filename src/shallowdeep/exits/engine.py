"""The batched early-exit engine: a batch runs stage by stage and loses the samples that exit.

After each IC the samples that stop are dropped from the running batch (``index_select`` on the
survivors), so their computation really ends there. Each stage costs one host-device
synchronisation (the number of survivors decides the next tensor's shape). Bookkeeping is done
only where samples leave: while nobody does, a stage costs the IC and the policy's test alone; a
stage that everybody leaves answers directly, with no copy. Feature maps keep the input's memory
format (channels-last runs channels-last throughout, which is much faster on CPUs).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..errors import UserError
from .policies import ExitPolicy, resolve_policy
from .stages import Answer, Running, stage_decision

if TYPE_CHECKING:
    from ..sdn import SDN


class _Leavers:
    """The answers of the samples that left so far."""

    def __init__(self, n: int, device: torch.device) -> None:
        self.predictions = torch.empty(n, dtype=torch.long, device=device)
        self.exits = torch.empty(n, dtype=torch.long, device=device)

    def record(self, predictions: torch.Tensor, ids: torch.Tensor | None, index: int) -> None:
        """The running samples ``ids`` (None: every sample) answer ``predictions`` at exit ``index`` (those that go
        on are overwritten later)."""
        if ids is None:
            self.predictions.copy_(predictions)
            self.exits.fill_(index)
        else:
            self.predictions.index_copy_(0, ids, predictions)
            self.exits.index_fill_(0, ids, index)

    def answer(self, net: SDN) -> Answer:
        flops = torch.tensor(net.exit_flops, dtype=torch.long).to(self.exits.device, non_blocking=True)
        return self.predictions, self.exits, flops[self.exits]


@torch.inference_mode()
def early_exit(
    net: SDN, x: torch.Tensor, threshold: float | None = None, policy: ExitPolicy | str | None = None
) -> Answer:
    """Classify the batch ``x`` with early exits.

    ``threshold`` alone selects the paper's max-probability rule; ``policy`` is a policy name used
    with ``threshold`` or an :class:`ExitPolicy` carrying its own. ``net`` must be in eval mode.

    Returns, per sample: the predicted class, the index of the exit it left at (0 = first IC,
    ``len(net.ics)`` = final head), and the FLOPs it cost (``net.exit_flops`` of that exit).
    """
    rule = resolve_policy(threshold, policy)
    if net.training:
        raise UserError("early exit needs the SDN in eval mode (call net.eval())")
    n, device = x.shape[0], x.device
    leavers: _Leavers | None = None  # allocated when the first sample leaves
    running = Running(x, None, None, [], rule.start(n, device))
    for index in range(len(net.ics)):  # the final segment comes after
        running, logits, go_on = stage_decision(net, rule, index, running)
        if len(running) == 1 and go_on.item():  # one sample: no index to compute
            continue
        keep = torch.nonzero(go_on).squeeze(1)  # the stage's one synchronisation
        if keep.shape[0] == len(running):
            continue
        if keep.shape[0] == 0 and leavers is None:
            return _everybody(net, logits.argmax(dim=1), index)
        if leavers is None:
            leavers = _Leavers(n, device)
        leavers.record(logits.argmax(dim=1), running.ids, index)
        if keep.shape[0] == 0:
            return leavers.answer(net)
        running = running.take(keep)
    final = net.segments[-1](running.h).argmax(dim=1)
    if leavers is None:
        return _everybody(net, final, len(net.ics))
    leavers.record(final, running.ids, len(net.ics))
    return leavers.answer(net)


def _everybody(net: SDN, predictions: torch.Tensor, index: int) -> Answer:
    """The answer when every sample leaves at exit ``index`` with ``predictions``."""
    n, device = predictions.shape[0], predictions.device
    return (predictions, torch.full((n,), index, dtype=torch.long, device=device),
            torch.full((n,), net.exit_flops[index], dtype=torch.long, device=device))


@torch.inference_mode()
def run_backbone(net: SDN, x: torch.Tensor) -> torch.Tensor:
    """The final logits of ``net`` without evaluating any IC: the plain backbone's cost."""
    for segment in net.segments:
        x = segment(x)
    return x
