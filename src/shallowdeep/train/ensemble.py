"""Fitting ZTW's geometric ensemble after the ICs, on the frozen network's IC logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data import ImageData, Splits
from ..data.loader import batches
from ..errors import UserError
from ..eval_mode import eval_mode
from ..sdn import SDN

ENSEMBLE_STEPS = 300
ENSEMBLE_LR = 0.05


def fit_ensemble(net: SDN, ic_logits: list[torch.Tensor], labels: torch.Tensor, steps: int = ENSEMBLE_STEPS) -> float:
    """Train ``net.ensemble`` (full batch, Adam) on fixed IC logits ``(samples, classes)`` per IC, the
    sum over exits of the cross-entropy of each exit's answer; returns that loss after training."""
    ensemble = net.ensemble
    if ensemble is None:
        raise ValueError("this SDN has no ensemble")
    log_probs = [torch.log_softmax(z.detach().float(), dim=1) for z in ic_logits]
    labels = labels.to(log_probs[0].device)
    optimizer = torch.optim.Adam(ensemble.parameters(), lr=ENSEMBLE_LR)
    ensemble.train()
    with torch.enable_grad():
        for _ in range(steps):
            loss = sum(F.cross_entropy(ensemble.exit_logits(k, log_probs), labels) for k in range(len(log_probs)))
            if not torch.isfinite(loss):
                raise UserError(f"fitting the exit ensemble gave a loss of {loss.item()}; the ICs' logits are not finite")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    ensemble.eval()
    return float(loss.detach())


@torch.no_grad()
def streamed_ic_logits(net: SDN, data: ImageData, splits: Splits, device: torch.device,
                       batch_size: int = 512) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Every IC's logits (eval mode, no augmentation) on ``data``, and its labels."""
    chunks: list[list[torch.Tensor]] = [[] for _ in net.ics]
    labels = []
    with eval_mode(net):
        for x, y in batches(data, splits.spec, batch_size, train=False, shuffle=False, device=device):
            for store, out in zip(chunks, net(x)[:-1]):
                store.append(out.float())
            labels.append(y)
    return [torch.cat(c) for c in chunks], torch.cat(labels)
