"""What the ``early-exit`` command records: the chosen policy's figures on calibration and test data.

The dict is JSON-ready and is what ``RUN/early-exit.json`` holds; the HTML report reads its
``policy``, ``threshold``, ``test`` and ``curve`` entries.
"""

from __future__ import annotations

from typing import Any, Sequence

from ..exit_outputs import ExitOutputs
from .policies import ExitPolicy
from .simulate import curve, final_head, grid_keys, oracle, simulate, summarise

FORMAT = "shallowdeep-early-exit-1"


def split_result(outputs: ExitOutputs, policy: ExitPolicy) -> dict[str, Any]:
    """The policy, the final head alone and the oracle on one split."""
    return {
        "samples": int(outputs.labels.size),
        "early_exit": summarise(outputs, simulate(outputs, policy)).as_dict(),
        "final_head": final_head(outputs).as_dict(),
        "oracle": oracle(outputs).as_dict(),
    }


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
    exit_names: Sequence[str],
) -> dict[str, Any]:
    """Everything about a calibrated policy: the threshold, which data chose it (``calibrated_on``), how it
    was chosen (``criterion``), its figures on the calibration and test data, and both trade-off curves."""
    return {
        "format": FORMAT,
        "policy": policy.name,
        "threshold": policy.threshold,
        "criterion": dict(criterion),
        "calibrated_on": dict(calibrated_on),
        "exit_names": [*exit_names, "final"],
        "exit_flops": [int(f) for f in test.exit_flops],
        "backbone_flops": int(test.backbone_flops),
        "calibration": split_result(calibration, policy),
        "test": split_result(test, policy),
        "curve": {"calibration": curve_points(calibration, policy), "test": curve_points(test, policy)},
    }
