"""Network overthinking (SDN paper, section 4), measured on stored per-exit outputs.

*Wasteful* effect: a sample that some exit before the final head already classifies correctly
was computed further than needed. *Destructive* effect: the final head is wrong on a sample that
an earlier internal classifier (IC) got right. The *oracle* lets each sample leave at its
earliest correct exit; samples that no exit gets right pay the cost of the whole SDN.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..errors import UserError
from ..exit_outputs import ExitOutputs, exit_names
from ..exits import earliest_correct_exit, oracle
from .probs import softmax


def overthinking(outputs: ExitOutputs, names: Sequence[str] | None = None) -> dict[str, Any]:
    """Wasteful and destructive effects and the oracle's cost on one split (JSON-ready dict).

    ``names`` (one per exit, the final head last; ``IC 1 .. IC K``, ``final`` by default) only labels the
    per-IC rows.
    """
    correct = outputs.correct
    num_exits, num_samples = correct.shape
    if num_samples == 0:
        raise UserError("overthinking needs at least one sample; the split is empty")
    if num_exits < 2:
        raise UserError("overthinking needs internal classifiers; this network has only its final head")
    names = list(names) if names is not None else exit_names(num_exits)
    if len(names) != num_exits:
        raise UserError(f"got {len(names)} exit names for {num_exits} exits")
    earliest = earliest_correct_exit(correct)
    counts = np.bincount(earliest[earliest >= 0], minlength=num_exits)
    never = int((earliest < 0).sum())
    wasteful = int(((earliest >= 0) & (earliest < num_exits - 1)).sum())
    best = oracle(outputs)

    final_wrong = ~correct[-1]
    rescued = final_wrong & correct[:-1].any(0)
    confidence = softmax(outputs.logits[:-1]).max(-1)  # (ICs, samples)
    per_ic = []
    for i in range(num_exits - 1):
        mask = final_wrong & correct[i]
        per_ic.append({
            "exit": i,
            "name": names[i],
            "count": int(mask.sum()),
            "mean_confidence": float(confidence[i, mask].mean()) if mask.any() else None,
        })
    mistakes = int(final_wrong.sum())
    return {
        "samples": num_samples,
        "exit_names": names,
        "exit_flops": [int(f) for f in outputs.exit_flops],
        "backbone_flops": int(outputs.backbone_flops),
        "exit_accuracy": [float(a) for a in correct.mean(1)],
        "wasteful": {
            "count": wasteful,
            "share": wasteful / num_samples,
            "earliest_correct_exit": {
                "counts": [int(c) for c in counts],
                "shares": [float(c) / num_samples for c in counts],
                "none_count": never,
                "none_share": never / num_samples,
            },
        },
        "oracle": {"average_flops": best.average_flops, "relative_cost": best.flops_fraction,
                   "accuracy": best.accuracy},
        "destructive": {
            "final_mistakes": mistakes,
            "count": int(rescued.sum()),
            "share_of_mistakes": float(rescued.sum()) / mistakes if mistakes else None,
            "share_of_samples": float(rescued.sum()) / num_samples,
            "per_ic": per_ic,
        },
    }
