"""What the ``early-exit`` command records: the chosen policy's figures on calibration and test data.

The dict is JSON-ready and is what ``RUN/early-exit.json`` holds; the HTML report reads its
``policy``, ``threshold``, ``test`` and ``curve`` entries and each split's ``best_at_budget`` table.
"""

from __future__ import annotations

from typing import Any, Sequence

from ..exit_outputs import ExitOutputs, exit_names
from .calibrate import best_index
from .policies import ExitPolicy
from .simulate import candidate_keys, curve, final_head, grid_keys, oracle, simulate, summarise, sweep

FORMAT = "shallowdeep-early-exit-1"
BUDGETS = (0.25, 0.5, 0.75, 1.0)


def split_result(outputs: ExitOutputs, policy: ExitPolicy) -> dict[str, Any]:
    """The policy, the final head alone and the oracle on one split."""
    return {
        "samples": int(outputs.labels.size),
        "early_exit": summarise(outputs, simulate(outputs, policy)).as_dict(),
        "final_head": final_head(outputs).as_dict(),
        "oracle": oracle(outputs).as_dict(),
        "best_at_budget": best_at_budgets(outputs, type(policy)),
    }


def best_at_budgets(outputs: ExitOutputs, kind: type[ExitPolicy],
                    budgets: Sequence[float] = BUDGETS) -> list[dict[str, Any]]:
    """For each budget (a fraction of the backbone's FLOPs), the most accurate threshold of ``kind`` on
    ``outputs`` whose average cost is within it, over every candidate threshold (as Zero Time Waste
    reports); accuracy, cost fraction and threshold are None, with a reason, when none fits."""
    keys = candidate_keys(outputs, kind)
    accuracy, average = sweep(outputs, kind, keys)
    fraction = average / outputs.backbone_flops
    rows = []
    for budget in budgets:
        feasible = fraction <= budget
        if not feasible.any():
            rows.append({"budget": budget, "accuracy": None, "flops_fraction": None, "threshold": None,
                         "reason": f"the cheapest threshold costs {fraction.min():.3f} of the backbone"})
            continue
        best = best_index(feasible, primary=accuracy, secondary=-average)
        rows.append({"budget": budget, "accuracy": float(accuracy[best]), "flops_fraction": float(fraction[best]),
                     "threshold": kind.threshold_of_key(float(keys[best]))})
    return rows


def curve_points(outputs: ExitOutputs, policy: ExitPolicy, points: int = 400) -> dict[str, list[float]]:
    """The policy's trade-off curve on one split, at up to ``points`` thresholds (JSON-ready)."""
    kind = type(policy)
    c = curve(outputs, kind, grid_keys(outputs, kind, points))
    return {"thresholds": c.thresholds.tolist(), "accuracy": c.accuracy.tolist(),
            "average_flops": c.average_flops.tolist(), "flops_fraction": c.flops_fraction.tolist()}


def early_exit_result(
    policy: ExitPolicy,
    criterion: dict[str, float],
    calibrated_on: dict[str, Any],
    calibration: ExitOutputs,
    test: ExitOutputs,
    layers: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Everything about a calibrated policy: the threshold, which data chose it (``calibrated_on``), how it
    was chosen (``criterion``), its figures on the calibration and test data, and both trade-off curves.
    ``layers`` names the ICs (see :func:`~shallowdeep.exit_outputs.exit_names`)."""
    return {
        "format": FORMAT,
        "policy": policy.name,
        "threshold": policy.threshold,
        "criterion": dict(criterion),
        "calibrated_on": dict(calibrated_on),
        "exit_names": exit_names(len(test.exit_flops), layers),
        "exit_flops": [int(f) for f in test.exit_flops],
        "backbone_flops": int(test.backbone_flops),
        "calibration": split_result(calibration, policy),
        "test": split_result(test, policy),
        "curve": {"calibration": curve_points(calibration, policy), "test": curve_points(test, policy)},
    }
