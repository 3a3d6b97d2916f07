"""Choosing a policy's threshold on calibration outputs (never on the outputs it is reported on)."""

from __future__ import annotations

import numpy as np

from ..choices import DEFAULT_MAX_DROP
from ..errors import UserError
from ..exit_outputs import ExitOutputs
from .ltt import certify
from .per_exit import per_exit_thresholds
from .policies import POLICIES, ExitPolicy
from .simulate import candidate_keys, sweep


def calibrate(
    outputs: ExitOutputs, policy: str = "maxprob", max_drop: float | None = None, budget: float | None = None,
    confidence: float | None = None, per_exit: bool = False, seed: int = 0, reference: np.ndarray | None = None,
) -> ExitPolicy:
    """The threshold of ``policy`` chosen on ``outputs`` (calibration data), by one of two criteria.

    ``max_drop`` (the default, 0.01): the lowest average cost whose accuracy is at most ``max_drop``
    below the final head's. ``budget``: the highest accuracy whose average cost is at most ``budget``
    times the backbone's FLOPs. Ties go to the other measure (higher accuracy, then lower cost), then
    to the larger threshold key (the more cautious policy).

    ``confidence`` (with ``max_drop``): the cheapest threshold whose *expected* drop on new data is
    certified to be at most ``max_drop`` with that probability (Learn then Test, see
    :mod:`~shallowdeep.exits.ltt`; ``seed`` orders its samples). ``per_exit`` (maxprob with ``max_drop``):
    one threshold per IC, see :mod:`~shallowdeep.exits.per_exit`.

    ``reference``: per sample, whether the network the drop is measured against is right (default: the
    final head), e.g. the original network when ``outputs`` come from a fine-tuned SDN.
    """
    if policy not in POLICIES:
        raise UserError(f"unknown exit policy '{policy}': choose one of {', '.join(POLICIES)}")
    if max_drop is not None and budget is not None:
        raise UserError("give either a maximum accuracy drop or a cost budget, not both")
    if budget is not None and (confidence is not None or per_exit):
        raise UserError("a confidence level or per-exit thresholds go with a maximum accuracy drop, not a budget")
    if per_exit and (policy != "maxprob" or confidence is not None):
        raise UserError("per-exit thresholds are supported for the maxprob policy without a confidence level")
    kind = POLICIES[policy]
    if budget is not None:
        return _within_budget(outputs, kind, budget)
    drop = DEFAULT_MAX_DROP if max_drop is None else max_drop
    if not 0 <= drop <= 1:
        raise UserError(f"maximum accuracy drop {drop} must lie in [0, 1] (0.01 = one point)")
    reference = reference_hits(outputs, reference)
    if confidence is not None:
        return certify(outputs, kind, drop, confidence, seed, reference).policy
    keys = candidate_keys(outputs, kind)
    accuracy, average = sweep(outputs, kind, keys)
    feasible = reference.mean() - accuracy <= drop + 1e-12
    best = kind(kind.threshold_of_key(float(keys[best_index(feasible, primary=-average, secondary=accuracy)])))
    return per_exit_thresholds(outputs, best, drop, reference) if per_exit else best


def reference_hits(outputs: ExitOutputs, reference: np.ndarray | None) -> np.ndarray:
    """Per sample, whether the reference network is right: the final head's hits when ``reference`` is None."""
    if reference is None:
        return outputs.correct[-1]
    reference = np.asarray(reference)
    if reference.shape != outputs.labels.shape or reference.dtype != bool:
        raise UserError(f"the reference must say for each of the {outputs.labels.size} samples whether it is right "
                        f"(a boolean array), got {reference.dtype} {reference.shape}")
    return reference


def _within_budget(outputs: ExitOutputs, kind: type[ExitPolicy], budget: float) -> ExitPolicy:
    if not budget > 0:
        raise UserError(f"cost budget {budget} must be a positive fraction of the backbone's FLOPs")
    keys = candidate_keys(outputs, kind)
    accuracy, average = sweep(outputs, kind, keys)
    feasible = average <= budget * outputs.backbone_flops
    if not feasible.any():
        cheapest = average.min() / outputs.backbone_flops
        raise UserError(f"cost budget {budget} is below the cheapest early exit ({cheapest:.3f} of the "
                        "backbone, everyone leaving at the first IC); raise --budget")
    return kind(kind.threshold_of_key(float(keys[best_index(feasible, primary=accuracy, secondary=-average)])))


def best_index(feasible: np.ndarray, primary: np.ndarray, secondary: np.ndarray) -> int:
    """Index of the feasible candidate with the highest (primary, secondary, index)."""
    candidates = np.flatnonzero(feasible)
    order = np.lexsort((candidates, secondary[candidates], primary[candidates]))
    return int(candidates[order[-1]])
