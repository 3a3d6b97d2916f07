"""The batched early-exit engine: a batch runs stage by stage and loses the samples that exit.

After each IC the samples that stop are dropped from the running batch (``index_select`` on the
survivors), so their computation really ends there. Each stage costs one host-device
synchronisation (the number of survivors decides the next tensor's shape); while nobody stops,
no bookkeeping is done at all, so a sample that runs to the end pays only for the ICs and one
comparison per stage.
"""

from __future__ import annotations

import torch

from ..errors import UserError
from ..sdn import SDN
from .policies import ExitPolicy, resolve_policy


@torch.inference_mode()
def early_exit(
    net: SDN, x: torch.Tensor, threshold: float | None = None, policy: ExitPolicy | str | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
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
    flops = torch.tensor(net.exit_flops, dtype=torch.long).to(device, non_blocking=True)
    predictions = exits = alive = None  # allocated when the first sample leaves
    state = rule.start(n, device)
    h = x
    raw: torch.Tensor | None = None  # the previous IC's logits (read by cascading ICs)
    log_probs: list[torch.Tensor] = []  # with an ensemble: every IC's log-softmax so far
    for index, (segment, ic) in enumerate(zip(net.segments, net.ics)):  # the final segment comes after
        h = segment(h)
        raw = ic(h, raw)
        logits = raw
        if net.ensemble is not None:
            log_probs.append(torch.log_softmax(raw.float(), dim=1))
            logits = net.ensemble.exit_logits(index, log_probs)
        go_on, state = rule.step(logits, state, index)
        keep = torch.nonzero(go_on).squeeze(1)  # the stage's one synchronisation
        if keep.shape[0] == h.shape[0]:
            continue
        if alive is None:
            predictions = torch.empty(n, dtype=torch.long, device=device)
            exits = torch.empty(n, dtype=torch.long, device=device)
            alive = torch.arange(n, device=device)
        # Every running sample is marked as leaving here; those that go on are overwritten later.
        predictions.index_copy_(0, alive, logits.argmax(dim=1))
        exits.index_fill_(0, alive, index)
        if keep.shape[0] == 0:
            return predictions, exits, flops[exits]
        alive, h, raw = alive.index_select(0, keep), h.index_select(0, keep), raw.index_select(0, keep)
        log_probs = [p.index_select(0, keep) for p in log_probs]
        state = tuple(s.index_select(0, keep) for s in state)
    final = net.segments[-1](h).argmax(dim=1)
    if alive is None:
        exits = torch.full((n,), len(net.ics), dtype=torch.long, device=device)
        return final, exits, flops[exits]
    predictions.index_copy_(0, alive, final)
    exits.index_fill_(0, alive, len(net.ics))
    return predictions, exits, flops[exits]


@torch.inference_mode()
def run_backbone(net: SDN, x: torch.Tensor) -> torch.Tensor:
    """The final logits of ``net`` without evaluating any IC: the plain backbone's cost."""
    for segment in net.segments:
        x = segment(x)
    return x
