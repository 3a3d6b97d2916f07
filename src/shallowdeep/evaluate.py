"""Per-exit accuracy and cost of a run, from its stored per-exit outputs."""

from __future__ import annotations

from typing import Any

import numpy as np

from .exit_outputs import ExitOutputs, exit_names


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Share of samples whose label is among the ``k`` highest logits (ties broken by index)."""
    if len(labels) == 0:
        return float("nan")
    k = min(k, logits.shape[-1])
    top = np.argsort(-logits, axis=-1, kind="stable")[:, :k]
    return float((top == labels[:, None]).any(axis=1).mean())


def exit_table(outputs: ExitOutputs, layers: list[str] | None = None) -> list[dict[str, Any]]:
    """One row per exit: name (the IC's layer, see :func:`exit_names`), top-1 and top-5 accuracy,
    cumulative FLOPs and their share of the backbone."""
    names = exit_names(len(outputs.logits), layers)
    return [
        {"exit": i, "name": names[i], "top1": topk_accuracy(logits, outputs.labels, 1),
         "top5": topk_accuracy(logits, outputs.labels, 5), "flops": int(outputs.exit_flops[i]),
         "flops_fraction": float(outputs.exit_flops[i] / outputs.backbone_flops)}
        for i, logits in enumerate(outputs.logits)
    ]
