"""The early-exit results as the early-exit command recorded them: one file per result in ``RUN/early-exit/``.

Each result is named by its key (criterion and value, policy, calibration data), e.g.
``max-drop=0.01 maxprob holdout``; ``RUN/early-exit.json`` repeats the latest. An ``early-exit.json``
without a key was written by an earlier version, which kept a single result, and counts as one result.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..io import read_json

EARLY_EXIT_JSON = "early-exit.json"
EARLY_EXIT_DIR = "early-exit"


def result_key(result: dict[str, Any]) -> str:
    """The name of an early-exit result: its criterion and value, its policy and its calibration data."""
    criterion = result.get("criterion") if isinstance(result.get("criterion"), dict) else {}
    parts = [f"{name.replace('_', '-')}={_number(criterion[name])}" for name in ("max_drop", "budget", "confidence")
             if criterion.get(name) is not None]
    return " ".join([*parts, str(result.get("policy", "?")), calibration_key(result.get("calibrated_on"))])


def calibration_key(source: Any) -> str:
    """The calibration data in a result key: the run's split, the test half and its seed, or a separate data set."""
    source = source if isinstance(source, dict) else {}
    if source.get("source") == "test-half":
        return f"test-half seed={source.get('seed', '?')}"
    if source.get("source") == "separate":
        where = str(source.get("data_dir", "?"))
        digest = hashlib.sha256(where.encode()).hexdigest()[:6]
        return f"{source.get('dataset', '?')}:{Path(where).name}:{source.get('split', '?')}:{digest}"
    return str(source.get("split", "?"))


def result_path(run_path: Path, key: str, suffix: str = ".json") -> Path:
    """Where the result named ``key`` is kept (``RUN/early-exit/<key, file-name safe>.json``, its plot .png)."""
    return Path(run_path) / EARLY_EXIT_DIR / (re.sub(r"[^A-Za-z0-9.=+-]+", "_", key) + suffix)


def read_early_exits(run_path: Path) -> list[dict[str, Any]]:
    """Every early-exit result of the run, each with its ``key``, in key order (none when the command has not
    run): the files in ``RUN/early-exit/``, and an earlier version's ``early-exit.json`` unless one holds its key."""
    folder = Path(run_path) / EARLY_EXIT_DIR
    found = {}
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        data = _read_object(path)
        found[str(data.get("key") or result_key(data))] = data
    earlier = read_earlier_result(run_path)
    if earlier is not None:
        found.setdefault(earlier["key"], earlier)
    return [{**found[key], "key": key} for key in sorted(found)]


def find_early_exit(run_path: Path, key: str | None = None) -> dict[str, Any]:
    """The early-exit result named ``key`` (as ``shallowdeep early-exit`` prints it), or the latest, with its
    ``key``; a one-line error when the run has none or none of that name."""
    results = read_early_exits(run_path)
    if not results:
        raise UserError(f"{run_path} has no early-exit result; run shallowdeep early-exit {run_path} first")
    if key is None:
        latest = Path(run_path) / EARLY_EXIT_JSON
        data = read_json(latest, f"run shallowdeep early-exit {run_path} again") if latest.is_file() else None
        key = data.get("key") if isinstance(data, dict) else None
        key = key if key in {r["key"] for r in results} else results[-1]["key"]
    found = next((r for r in results if r["key"] == key), None)
    if found is None:
        raise UserError(f"{run_path} has no early-exit result '{key}'; it has: "
                        + "; ".join(repr(r["key"]) for r in results))
    return found


def read_earlier_result(run_path: Path) -> dict[str, Any] | None:
    """The single result an earlier version wrote to ``early-exit.json`` (no ``key``), with its key; None when
    there is none or the file is this version's copy of the latest result."""
    path = Path(run_path) / EARLY_EXIT_JSON
    if not path.is_file():
        return None
    data = _read_object(path)
    return None if "key" in data else {**data, "key": result_key(data)}


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


def stored_point(data: dict[str, Any], name: str, split: str = "test") -> tuple[float, float] | None:
    """(cost fraction, accuracy) of ``name`` (e.g. 'early_exit', 'oracle') on ``split``, if recorded."""
    entry = data.get(split, {}).get(name) if isinstance(data.get(split), dict) else None
    if entry is None and isinstance(data.get(name), dict):
        entry = data[name].get(split, data[name])
    if isinstance(entry, dict) and _is_number(entry.get("flops_fraction")) and _is_number(entry.get("accuracy")):
        return float(entry["flops_fraction"]), float(entry["accuracy"])
    return None


def _read_object(path: Path) -> dict[str, Any]:
    data = read_json(path, "run shallowdeep early-exit again")
    if not isinstance(data, dict):
        raise UserError(f"{path} does not hold a JSON object; run shallowdeep early-exit again")
    return data


def _number(value: Any) -> str:
    return f"{value:g}" if _is_number(value) else str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
