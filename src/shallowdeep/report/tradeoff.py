"""The early-exit trade-off the report shows: from ``RUN/early-exit.json`` when the early-exit command
wrote it, else the paper's max-probability policy simulated here on the stored test outputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..analysis.probs import softmax
from ..errors import UserError

EARLY_EXIT_JSON = "early-exit.json"


def maxprob_curve(logits: np.ndarray, labels: np.ndarray, exit_flops: np.ndarray, backbone_flops: int,
                  points: int = 201) -> dict[str, list[float]]:
    """Accuracy and average cost (fraction of the backbone) when each sample leaves at the first IC whose
    maximum softmax probability reaches q, for q on an even grid of ``points`` values in [0, 1]."""
    thresholds = np.linspace(0.0, 1.0, points)
    confidence = softmax(logits[:-1]).max(-1)  # (ICs, samples)
    predictions = logits.argmax(-1)
    num_ics, n = confidence.shape
    accuracy, cost = [], []
    for q in thresholds:
        stops = confidence >= q
        exits = np.where(stops.any(0), stops.argmax(0), num_ics)
        accuracy.append(float((predictions[exits, np.arange(n)] == labels).mean()))
        cost.append(float(np.asarray(exit_flops)[exits].mean()) / backbone_flops)
    return {"thresholds": thresholds.tolist(), "accuracy": accuracy, "flops_fraction": cost}


def read_early_exit(run_path: Path) -> dict[str, Any] | None:
    """``RUN/early-exit.json``, or None when the early-exit command has not been run."""
    path = Path(run_path) / EARLY_EXIT_JSON
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is damaged (not valid JSON); run shallowdeep early-exit again") from exc
    if not isinstance(data, dict):
        raise UserError(f"{path} does not hold a JSON object; run shallowdeep early-exit again")
    return data


def stored_curve(data: dict[str, Any]) -> tuple[list[float], list[float]] | None:
    """(cost fractions, accuracies) of the test curve in an early-exit JSON, if it holds one."""
    for key in ("test_curve", "curve"):
        curve = data.get(key)
        if isinstance(curve, dict):
            curve = curve.get("test", curve)
            cost, accuracy = curve.get("flops_fraction"), curve.get("accuracy")
            if isinstance(cost, list) and isinstance(accuracy, list) and len(cost) == len(accuracy):
                return cost, accuracy
    return None


def stored_point(data: dict[str, Any], name: str) -> tuple[float, float] | None:
    """(cost fraction, accuracy) of ``name`` (e.g. 'early_exit', 'oracle') on the test split, if recorded."""
    entry = data.get("test", {}).get(name) if isinstance(data.get("test"), dict) else None
    if entry is None and isinstance(data.get(name), dict):
        entry = data[name].get("test", data[name])
    if isinstance(entry, dict) and _is_number(entry.get("flops_fraction")) and _is_number(entry.get("accuracy")):
        return float(entry["flops_fraction"]), float(entry["accuracy"])
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
