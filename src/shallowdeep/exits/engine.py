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

if TYPE_CHECKING:
    from ..sdn import SDN

Answer = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class _Leavers:
    """The answers of the samples that left so far, and which of the input's samples are still running."""

    def __init__(self, n: int, device: torch.device) -> None:
        self.predictions = torch.empty(n, dtype=torch.long, device=device)
        self.exits = torch.empty(n, dtype=torch.long, device=device)
        self.alive = torch.arange(n, device=device)

    def record(self, predictions: torch.Tensor, index: int) -> None:
        """Every running sample answers ``predictions`` at exit ``index`` (those that go on are overwritten later)."""
        self.predictions.index_copy_(0, self.alive, predictions)
        self.exits.index_fill_(0, self.alive, index)

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
    cascades = any(ic.cascade_classes for ic in net.ics)
    leavers: _Leavers | None = None  # allocated when the first sample leaves
    state = rule.start(n, device)
    h = x
    raw: torch.Tensor | None = None  # the previous IC's logits (read by cascading ICs)
    log_probs: list[torch.Tensor] = []  # with an ensemble: every IC's log-softmax so far
    for index in range(len(net.ics)):  # the final segment comes after
        h, raw, logits, log_probs, go_on, state = stage_decision(net, rule, index, h, raw, log_probs, state)
        if h.shape[0] == 1 and go_on.item():  # one sample: no index to compute
            continue
        keep = torch.nonzero(go_on).squeeze(1)  # the stage's one synchronisation
        if keep.shape[0] == h.shape[0]:
            continue
        if keep.shape[0] == 0 and leavers is None:
            return _everybody(net, logits.argmax(dim=1), index)
        if leavers is None:
            leavers = _Leavers(n, device)
        leavers.record(logits.argmax(dim=1), index)
        if keep.shape[0] == 0:
            return leavers.answer(net)
        leavers.alive, h = leavers.alive.index_select(0, keep), rows(h, keep)
        raw = raw.index_select(0, keep) if cascades else None
        log_probs = [p.index_select(0, keep) for p in log_probs]
        state = tuple(s.index_select(0, keep) for s in state)
    final = net.segments[-1](h).argmax(dim=1)
    if leavers is None:
        return _everybody(net, final, len(net.ics))
    leavers.record(final, len(net.ics))
    return leavers.answer(net)


def _everybody(net: SDN, predictions: torch.Tensor, index: int) -> Answer:
    """The answer when every sample leaves at exit ``index`` with ``predictions``."""
    n, device = predictions.shape[0], predictions.device
    return (predictions, torch.full((n,), index, dtype=torch.long, device=device),
            torch.full((n,), net.exit_flops[index], dtype=torch.long, device=device))


def stage_decision(net: SDN, rule: ExitPolicy, index: int, h: torch.Tensor, raw: torch.Tensor | None,
                   log_probs: list[torch.Tensor], state: State
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor], torch.Tensor, State]:
    """Stage ``index`` on the running samples: segment ``index`` maps ``h`` (the previous stage's map) to IC
    ``index``'s input, the IC reads it (and ``raw``, the previous IC's logits, when it cascades), the ensemble
    (if any) combines it with ``log_probs`` (every earlier IC's log-probabilities), and the policy decides.
    Returns the new map, the IC's logits, the exit's answer, the log-probabilities so far, whether each
    sample goes on, and the policy's new state."""
    h = net.segments[index](h)
    raw = net.ics[index](h, raw)
    logits = raw
    if net.ensemble is not None:
        log_probs = [*log_probs, torch.log_softmax(raw.float(), dim=1)]
        logits = net.ensemble.exit_logits(index, log_probs)
    go_on, state = rule.step(logits, state, index)
    return h, raw, logits, log_probs, go_on, state


def rows(h: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Rows ``keep`` of the feature map ``h``, in its memory format (``index_select`` alone would make a
    channels-last map contiguous, slowly)."""
    if h.dim() == 4 and not h.is_contiguous() and h.is_contiguous(memory_format=torch.channels_last):
        return h.permute(0, 2, 3, 1).index_select(0, keep).permute(0, 3, 1, 2)
    return h.index_select(0, keep)


@torch.inference_mode()
def run_backbone(net: SDN, x: torch.Tensor) -> torch.Tensor:
    """The final logits of ``net`` without evaluating any IC: the plain backbone's cost."""
    for segment in net.segments:
        x = segment(x)
    return x
