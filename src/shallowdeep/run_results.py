"""What the analysis commands and the backdoor study keep in a run folder, written and read here only (the names
are :mod:`shallowdeep.run_folder`'s). No torch.

- ``RUN/eval-<split>.json``, ``RUN/overthinking.json``, ``RUN/confusion.json``: one result each, replaced whole.
- The early-exit store: every result under its key (criterion and value, policy, calibration data, e.g.
  ``max-drop=0.01 maxprob holdout``) in ``RUN/early-exit/<key>.json`` with its plot ``<key>.png``;
  ``RUN/early-exit.json`` and ``RUN/early-exit.png`` repeat the latest. An ``early-exit.json`` without a key was
  written by an earlier version, which kept a single result: it counts as one result, and is moved under its key
  before a new result replaces it.
- ``RUN/report/``: the report's page, its PNGs and ``report.json``.
- A backdoor study's ``study.json`` (its settings), ``backdoor.json`` and ``backdoor-*.png`` (its figures).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Callable, Mapping

from .errors import UserError
from .io import atomic_write_bytes, atomic_write_json, read_json
from .run_folder import (BACKDOOR_FIGURES, BACKDOOR_JSON, CONFIG, CONFUSION_JSON, EARLY_EXIT_DIR, EARLY_EXIT_JSON,
                         EARLY_EXIT_PNG, OVERTHINKING_JSON, REPORT_DIR, REPORT_JSON, REPORT_PAGE, STUDY_JSON,
                         evaluation_json, trigger_copy)

# every PNG the report has written (examples.png by earlier versions), removed when a report draws no such figure
REPORT_FIGURES = ("accuracy", "tradeoff", "earliest_exit", "examples", "destructive", "confusion", "gradcam")


def write_evaluation(run_path: Path, split: str, result: dict[str, Any]) -> Path:
    """Keep the evaluation of ``split`` (``RUN/eval-<split>.json``); returns its path."""
    return _write(Path(run_path) / evaluation_json(split), result)


def write_overthinking(run_path: Path, result: dict[str, Any]) -> Path:
    """Keep the overthinking result (``RUN/overthinking.json``); returns its path."""
    return _write(Path(run_path) / OVERTHINKING_JSON, result)


def write_confusion(run_path: Path, result: dict[str, Any]) -> Path:
    """Keep the confusion result (``RUN/confusion.json``); returns its path."""
    return _write(Path(run_path) / CONFUSION_JSON, result)


def _write(path: Path, result: dict[str, Any]) -> Path:
    atomic_write_json(path, result)
    return path


# --- the early-exit store


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


def latest_early_exit_path(run_path: Path) -> Path:
    """``RUN/early-exit.json``: the latest early-exit result."""
    return Path(run_path) / EARLY_EXIT_JSON


def write_early_exit(run_path: Path, result: dict[str, Any], plot: Callable[[dict[str, Any]], bytes]) -> Path:
    """Keep ``result`` under its key with its plot (``plot`` draws it from the keyed result), replacing only an
    earlier result of that key, and as the latest result; an earlier version's single result is moved under its own
    key first. Returns the result's path."""
    run_path = Path(run_path)
    earlier = read_earlier_result(run_path)
    if earlier is not None and not result_path(run_path, earlier["key"]).exists():
        if (run_path / EARLY_EXIT_PNG).is_file():
            atomic_write_bytes(result_path(run_path, earlier["key"], ".png"), (run_path / EARLY_EXIT_PNG).read_bytes())
        atomic_write_json(result_path(run_path, earlier["key"]), earlier)
    result = {"key": result_key(result), **result}
    path, png = result_path(run_path, result["key"]), plot(result)
    atomic_write_json(path, result)
    atomic_write_bytes(result_path(run_path, result["key"], ".png"), png)
    atomic_write_json(run_path / EARLY_EXIT_JSON, result)
    atomic_write_bytes(run_path / EARLY_EXIT_PNG, png)
    return path


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


def latest_early_exit_plot(run_path: Path) -> bytes | None:
    """The plot of the latest early-exit result as the command drew it (``RUN/early-exit.png``), None if absent."""
    path = Path(run_path) / EARLY_EXIT_PNG
    return path.read_bytes() if path.is_file() else None


def stored_curve(data: dict[str, Any]) -> tuple[list[float], list[float]] | None:
    """(cost fractions, accuracies) of the test curve in an early-exit result, if it holds one."""
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


# --- the report folder


def report_dir(run_path: Path) -> Path:
    """``RUN/report/``, the report's folder."""
    return Path(run_path) / REPORT_DIR


def write_report_files(run_path: Path, figures: Mapping[str, bytes], summary: dict[str, Any], page: str) -> Path:
    """Write the report's PNGs (``figures``, by file name), ``report.json`` (``summary``) and its page into
    ``RUN/report/``, removing a PNG an earlier report drew that this one does not; returns the page's path."""
    folder = report_dir(run_path)
    for name, png in figures.items():
        atomic_write_bytes(folder / name, png)
    for stale in {f"{f}.png" for f in REPORT_FIGURES} - set(figures):
        (folder / stale).unlink(missing_ok=True)
    atomic_write_json(folder / REPORT_JSON, summary)
    atomic_write_bytes(folder / REPORT_PAGE, page.encode("utf-8"))
    return folder / REPORT_PAGE


# --- the backdoor study


def holds_study(out: Path) -> bool:
    """Whether ``out`` holds a study (its settings) or a run already."""
    return (Path(out) / STUDY_JSON).exists() or (Path(out) / CONFIG).exists()


def write_study_settings(out: Path, settings: dict[str, Any]) -> None:
    """Record a study's settings (``OUT/study.json``): enough to resume it."""
    atomic_write_json(Path(out) / STUDY_JSON, settings)


def read_study_settings(out: Path) -> dict[str, Any]:
    """The recorded settings of the study in ``out``; a one-line error when it holds none."""
    path = Path(out) / STUDY_JSON
    if not path.is_file():
        raise UserError(f"{out} holds no study to resume ({STUDY_JSON} is missing)")
    return read_json(path)


def study_settings_damaged(exc: Exception) -> UserError:
    """The one-line error of a study whose recorded settings cannot be read."""
    return UserError(f"{STUDY_JSON} is damaged ({exc!s:.100}); start the study again in a new folder")


def write_backdoor_figures(out: Path, confusion: bytes, exits: bytes, examples: bytes) -> None:
    """Keep a study's PNG figures: the confusion detector's histogram, the per-exit accuracies, the examples."""
    for role, png in (("confusion", confusion), ("exits", exits), ("examples", examples)):
        atomic_write_bytes(Path(out) / BACKDOOR_FIGURES[role], png)


def write_backdoor(out: Path, result: dict[str, Any]) -> Path:
    """Keep a study's figures, ``OUT/backdoor.json``; returns its path."""
    return _write(backdoor_path(out), result)


def write_trigger_copy(run_dir: Path, pattern: Path) -> str:
    """Copy the trigger image ``pattern`` into a backdoored run's folder; returns the copy's name there."""
    name = trigger_copy(str(pattern))
    atomic_write_bytes(Path(run_dir) / name, Path(pattern).read_bytes())
    return name


def backdoor_path(out: Path) -> Path:
    """``OUT/backdoor.json``: the study's figures."""
    return Path(out) / BACKDOOR_JSON


def read_backdoor(run_path: Path) -> tuple[dict[str, Any], list[tuple[str, bytes]]] | None:
    """The backdoor study's figures kept in the run (``backdoor.json``) and its PNGs (name, bytes), None when the
    run holds no study's figures."""
    path = Path(run_path) / BACKDOOR_JSON
    if not path.is_file():
        return None
    data = read_json(path, "run shallowdeep backdoor again")
    return data, [(png.name, png.read_bytes()) for png in sorted(Path(run_path).glob("backdoor*.png"))]


def recorded_study_seconds(out: Path) -> dict[str, float]:
    """The stage times an earlier run of the study recorded in ``backdoor.json`` (none when absent or unreadable)."""
    try:
        seconds = json.loads((Path(out) / BACKDOOR_JSON).read_text()).get("seconds")
    except (OSError, json.JSONDecodeError, AttributeError):
        return {}
    return seconds if isinstance(seconds, dict) else {}
