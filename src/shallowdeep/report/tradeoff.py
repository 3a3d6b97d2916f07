"""The early-exit trade-off as the early-exit command recorded it in ``RUN/early-exit.json``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import UserError
from ..io import read_json

EARLY_EXIT_JSON = "early-exit.json"


def read_early_exit(run_path: Path) -> dict[str, Any] | None:
    """``RUN/early-exit.json``, or None when the early-exit command has not been run."""
    path = Path(run_path) / EARLY_EXIT_JSON
    if not path.is_file():
        return None
    data = read_json(path, "run shallowdeep early-exit again")
    if not isinstance(data, dict):
        raise UserError(f"{path} does not hold a JSON object; run shallowdeep early-exit again")
    return data


def stored_curve(data: dict[str, Any]) -> tuple[list[float], list[float]] | None:
    """(cost fractions, accuracies) of the test curve in an early-exit JSON, if it holds one."""
    for key in ("test_curve", "curve"):
        entry = data.get(key)
        if isinstance(entry, dict):
            entry = entry.get("test", entry)
            cost, accuracy = entry.get("flops_fraction"), entry.get("accuracy")
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
