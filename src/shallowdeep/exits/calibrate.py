"""Choosing a policy's threshold on held-out per-exit outputs (never on the test set)."""

from __future__ import annotations

import numpy as np

from ..errors import UserError
from ..exit_outputs import ExitOutputs
from .policies import POLICIES, ExitPolicy
from .simulate import candidate_keys, sweep

DEFAULT_MAX_DROP = 0.01


def calibrate(
    outputs: ExitOutputs, policy: str = "maxprob", max_drop: float | None = None, budget: float | None = None
) -> ExitPolicy:
    """The threshold of ``policy`` chosen on ``outputs`` (calibration data), by one of two criteria.

    ``max_drop`` (the default, 0.01): the lowest average cost whose accuracy is at most ``max_drop``
    below the final head's. ``budget``: the highest accuracy whose average cost is at most ``budget``
    times the backbone's FLOPs. Ties go to the other measure (higher accuracy, then lower cost), then
    to the larger threshold key (the more cautious policy).
    """
    if policy not in POLICIES:
        raise UserError(f"unknown exit policy '{policy}': choose one of {', '.join(POLICIES)}")
    if max_drop is not None and budget is not None:
        raise UserError("give either a maximum accuracy drop or a cost budget, not both")
    kind = POLICIES[policy]
    keys = candidate_keys(outputs, kind)
    accuracy, average = sweep(outputs, kind, keys)
    if budget is None:
        drop = DEFAULT_MAX_DROP if max_drop is None else max_drop
        if not 0 <= drop <= 1:
            raise UserError(f"maximum accuracy drop {drop} must lie in [0, 1] (0.01 = one point)")
        final = outputs.correct[-1].mean()
        feasible = final - accuracy <= drop + 1e-12
        best = _best(feasible, primary=-average, secondary=accuracy)
    else:
        if not budget > 0:
            raise UserError(f"cost budget {budget} must be a positive fraction of the backbone's FLOPs")
        feasible = average <= budget * outputs.backbone_flops
        if not feasible.any():
            cheapest = average.min() / outputs.backbone_flops
            raise UserError(f"cost budget {budget} is below the cheapest early exit ({cheapest:.3f} of the "
                            "backbone, everyone leaving at the first IC); raise --budget")
        best = _best(feasible, primary=accuracy, secondary=-average)
    return kind(kind.threshold_of_key(float(keys[best])))


def _best(feasible: np.ndarray, primary: np.ndarray, secondary: np.ndarray) -> int:
    """Index of the feasible candidate with the highest (primary, secondary, index)."""
    candidates = np.flatnonzero(feasible)
    order = np.lexsort((candidates, secondary[candidates], primary[candidates]))
    return int(candidates[order[-1]])
