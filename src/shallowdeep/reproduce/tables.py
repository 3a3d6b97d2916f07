"""The tables of a reproduction, ``OUT/tables.json`` and ``OUT/tables.md``, read from its run folders' results.

Every cell holds our figure (``ours``; a share or a fraction of the backbone's cost) or, when there is none, a
``note`` saying why (the step failed, did not run, no threshold fits a budget...), and beside it what the paper says
for that cell with its citation, or "not stated" (:mod:`.paper`). The tables end with the answer to the question a
reproduction asks: at an equal training budget, does SDN training (or the mixed regime) beat IC-only training on the
early-exit cost at a 1-point drop and on final accuracy?
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..io import atomic_write_bytes, atomic_write_json
from ..run_folder import CONFIG, CONFUSION_JSON, METRICS, OVERTHINKING_JSON, evaluation_json
from ..run_results import backdoor_path, result_path
from . import TRAININGS
from .paper import NOT_STATED, paper_cell, paper_figures, paper_source
from .steps import BACKDOOR, CALIBRATIONS, EPOCHS, MAX_DROP, Outcome, Settings, early_exit_keys

FORMAT = "shallowdeep-reproduce-tables-1"
BUDGETS = (0.25, 0.5, 0.75)
SDNS = ("ic-only", "sdn", "mixed")
PAPER_SHORT = "Kaya, Hong & Dumitraș (ICML 2019)"
CALIBRATION_TITLES = {"holdout": "holdout", "test-half": "test half", "certified": "certified (0.9)"}


def cell(ours: float | None, note: str | None = None, paper: str | None = None) -> dict[str, Any]:
    """One table cell: our figure or why there is none, and the paper's figure for the cell (``paper``: the cell's
    name in the paper's figures) or "not stated"."""
    return {"ours": ours, "note": None if ours is not None else (note or "not measured"),
            "paper": NOT_STATED if paper is None else paper_cell(paper)}


def build_tables(settings: Settings, outcomes: list[Outcome]) -> dict[str, Any]:
    """Everything ``tables.json`` holds, from the run folders in ``settings.out`` and this time's ``outcomes``."""
    status = {o.name: o for o in outcomes}
    runs = {name: _run_tables(settings.out / name, name, status) for name in TRAININGS}
    tables = {"format": FORMAT, "paper": paper_source(), "paper_figures": [asdict(f) for f in paper_figures().values()],
              "settings": settings.record(),
              "steps": [{"name": o.name, "status": o.status, "detail": o.detail, "seconds": o.seconds}
                        for o in outcomes],
              "budget": _budget(settings), "runs": runs,
              "backdoor": _backdoor(settings.out / BACKDOOR, status)}
    tables["answer"] = _answer(runs, tables["budget"])
    return tables


def write_tables(out: Path, tables: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``OUT/tables.json`` and ``OUT/tables.md``; returns their paths."""
    atomic_write_json(out / "tables.json", tables)
    atomic_write_bytes(out / "tables.md", render_markdown(tables).encode("utf-8"))
    return out / "tables.json", out / "tables.md"


# --- reading the results


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _why_missing(name: str, status: dict[str, Outcome]) -> str:
    """Why a figure of the step ``name`` (e.g. 'sdn/early-exit') is missing."""
    for step in (name, name.split("/")[0]):
        o = status.get(step)
        if o is not None and o.status in ("failed", "not run"):
            return f"{step} {o.status}: {o.detail}" if o.detail else f"{step} {o.status}"
    return f"{name} not run"


def _run_tables(path: Path, name: str, status: dict[str, Outcome]) -> dict[str, Any]:
    """The cells of one trained network."""
    evaluation = _read(path / evaluation_json("test"))
    missing = _why_missing(f"{name}/evaluate", status)
    exits = [{"name": e["name"], "accuracy": cell(e["top1"]), "cost": cell(e["flops_fraction"])}
             for e in evaluation["exits"]] if evaluation else [{"name": "every exit", "accuracy": cell(None, missing),
                                                                "cost": cell(None, missing)}]
    tables: dict[str, Any] = {"run": str(path), "training_seconds": _training_seconds(path), "exits": exits,
                              "final_accuracy": cell(evaluation["top1"] if evaluation else None, missing)}
    if name == "cnn":
        return tables
    results = {c: _read(result_path(path, key)) for c, key in early_exit_keys().items()}
    missing = _why_missing(f"{name}/early-exit", status)
    tables["early_exit"] = {c: _early_exit_cells(results[c], missing) for c in CALIBRATIONS}
    tables["budgets"] = _budget_cells(results["holdout"], missing)
    over, missing = _read(path / OVERTHINKING_JSON), _why_missing(f"{name}/overthinking", status)
    destructive = over["destructive"]["share_of_mistakes"] if over else None
    tables["overthinking"] = {
        "wasteful": cell(over["wasteful"]["share"] if over else None, missing, "wasteful_share"),
        "destructive": cell(destructive, missing if not over else "the final head makes no mistake",
                            "destructive_share")}
    conf, missing = _read(path / CONFUSION_JSON), _why_missing(f"{name}/confusion", status)
    undefined = "undefined: the final head is always right (or always wrong)"
    tables["confusion"] = {
        "auroc_confusion": cell(conf["auroc"]["confusion"] if conf else None, missing if not conf else undefined,
                                "auroc_confusion"),
        "auroc_max_softmax": cell(conf["auroc"]["confidence"] if conf else None, missing if not conf else undefined,
                                  "auroc_max_softmax")}
    return tables


def _early_exit_cells(result: dict[str, Any] | None, missing: str) -> dict[str, Any]:
    """Test accuracy and cost of early exit at a 1-point drop, next to the final head's accuracy."""
    if result is None:
        return {k: cell(None, missing, "early_exit_cost" if k == "cost" else None)
                for k in ("accuracy", "final_accuracy", "cost")}
    test = result["test"]
    return {"accuracy": cell(test["early_exit"]["accuracy"]), "final_accuracy": cell(test["final_head"]["accuracy"]),
            "cost": cell(test["early_exit"]["flops_fraction"], paper="early_exit_cost"),
            "threshold": result["threshold"], "samples": test["samples"]}


def _budget_cells(result: dict[str, Any] | None, missing: str) -> list[dict[str, Any]]:
    """The best test accuracy within 25/50/75 % of the backbone's cost, over every maxprob threshold."""
    entries = {e["budget"]: e for e in result["test"]["best_at_budget"]} if result else {}
    rows = []
    for budget in BUDGETS:
        entry = entries.get(budget)
        note = missing if result is None else (entry or {}).get("reason", "not measured")
        rows.append({"budget": budget,
                     "accuracy": cell(entry["accuracy"] if entry else None, note, f"accuracy_at_{round(100 * budget)}"),
                     "cost": cell(entry["flops_fraction"] if entry else None, note)})
    return rows


def _training_seconds(path: Path) -> float | None:
    """The seconds of every epoch the run trained, summed (None when it has not trained one)."""
    try:
        rows = [json.loads(line) for line in (path / METRICS).read_text().splitlines() if line.strip()]
    except (OSError, json.JSONDecodeError):
        return None
    return round(sum(float(r.get("seconds", 0)) for r in rows), 1) if rows else None


def _budget(settings: Settings) -> dict[str, Any]:
    """The training budget of each way to an SDN, in epochs over the training images."""
    e = EPOCHS[settings.scale]
    ways = {"cnn + ic-only": e["cnn"] + e["ic-only"], "sdn": e["sdn"], "cnn + mixed": e["cnn"] + e["mixed"]}
    recipes = {}
    for name in TRAININGS:
        config = _read(settings.out / name / CONFIG)
        recipes[name] = config["train"]["recipe"] if config else None
    return {"unit": "epochs over the training images", "epochs": e, "ways": ways,
            "equal": len(set(ways.values())) == 1, "recipes": recipes,
            "note": ("IC-only epochs train the ICs alone on the frozen backbone's cached maps, so they cost less "
                     "computation than an epoch of the whole network; the budget counts passes over the data")}


def _backdoor(path: Path, status: dict[str, Outcome]) -> dict[str, Any] | None:
    """The backdoor study's cells, None when it was neither asked for nor run before."""
    result = _read(backdoor_path(path))
    if result is None:
        o = status.get(BACKDOOR)
        return None if o is None else {"missing": _why_missing(BACKDOOR, status)}
    t, e = result["triggered"], result["early_exit"]
    return {"run": str(path),
            "triggered_accuracy_cnn": cell(t["accuracy_cnn"]),
            "triggered_accuracy_early_exit": cell(t["accuracy_early_exit"]),
            "attack_success_rate": cell(result["attack"]["success_rate"]),
            "clean_accuracy_cnn": cell(result["clean"]["accuracy_cnn"]),
            "early_exit_cost_triggered": cell(e["triggered_test"]["flops_fraction"]),
            "detection_auroc_confusion": cell(result["detection"]["auroc"]),
            "detection_auroc_max_softmax": cell(result["detection"]["auroc_confidence"]),
            "targets": result["targets"]}


# --- the answer


def _answer(runs: dict[str, Any], budget: dict[str, Any]) -> dict[str, Any]:
    """Whether SDN training and the mixed regime beat IC-only training on early-exit cost at a 1-point drop (lower
    is better) and on final accuracy (higher is better), each from the measured figures."""
    ic = runs["ic-only"]
    comparisons = {}
    for way in ("sdn", "mixed"):
        other = runs[way]
        rows = {f"early-exit cost, {CALIBRATION_TITLES[c]}": _compare(other["early_exit"][c]["cost"],
                                                                       ic["early_exit"][c]["cost"], lower=True)
                for c in CALIBRATIONS}
        rows["final accuracy"] = _compare(other["final_accuracy"], ic["final_accuracy"], lower=False)
        comparisons[way] = rows
    return {"question": ("At an equal training budget, does SDN training (or the mixed regime) beat IC-only "
                         f"training on the early-exit cost at a {100 * MAX_DROP:g}-point drop and on final accuracy?"),
            "equal_budget": budget["equal"], "comparisons": comparisons,
            "paper": NOT_STATED}


def _compare(ours: dict[str, Any], theirs: dict[str, Any], lower: bool) -> dict[str, Any]:
    """``ours`` against IC-only's ``theirs``: "yes", "no", "tie" or "cannot tell", with both figures."""
    a, b = ours["ours"], theirs["ours"]
    if a is None or b is None:
        verdict = "cannot tell"
    elif a == b:
        verdict = "tie"
    else:
        verdict = "yes" if (a < b) == lower else "no"
    return {"verdict": verdict, "value": a, "ic_only": b}


# --- markdown


def _fmt(c: dict[str, Any], percent: bool = True) -> str:
    if c["ours"] is None:
        return f"— ({c['note']})"
    return f"{100 * c['ours']:.2f} %" if percent else f"{c['ours']:.3f}"


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    escape = lambda text: str(text).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return lines + ["| " + " | ".join(escape(v) for v in row) + " |" for row in rows] + [""]


def render_markdown(t: dict[str, Any]) -> str:
    """``tables.md``: the same cells as ``tables.json``, one table per kind of figure."""
    s = t["settings"]
    model = s["model"]
    backbone = model.get("arch") or model.get("factory") or model.get("library")
    lines = [f"# Reproduction: {backbone} on {s['data'].get('name')} ({s['scale']} scale)", "",
             f"Paper: {t['paper']}. Beside each of our figures stands the paper's for the same cell with its citation, "
             f"or \"{NOT_STATED}\" where the paper's text gives none. Costs are fractions of the backbone's FLOPs; "
             "every figure is on the test split.", ""]
    lines += ["## Steps", ""] + _table(["step", "status", "detail", "seconds"], [
        [o["name"], o["status"], o["detail"] or "—", "—" if o["seconds"] is None else f"{o['seconds']:.0f}"]
        for o in t["steps"]])
    b = t["budget"]
    lines += ["## Training budget", "",
              f"{'Equal' if b['equal'] else 'Not equal'} training budget, in {b['unit']}: "
              + ", ".join(f"{way} {n}" for way, n in b["ways"].items()) + f". {b['note']}.", ""]
    lines += _table(["run", "epochs", "recipe", "training seconds"], [
        [name, str(b["epochs"][name]), _recipe(b["recipes"][name]),
         "—" if t["runs"][name]["training_seconds"] is None else f"{t['runs'][name]['training_seconds']:.0f}"]
        for name in TRAININGS])
    lines += ["## Every exit's accuracy and cost", ""]
    for name in TRAININGS:
        lines += [f"### {name}", ""] + _table(["exit", "accuracy", "cost", "paper"], [
            [e["name"], _fmt(e["accuracy"]), _fmt(e["cost"], False), e["accuracy"]["paper"]]
            for e in t["runs"][name]["exits"]])
    sdns = [(name, t["runs"][name]) for name in SDNS]
    lines += [f"## Early exit at a {100 * MAX_DROP:g}-point drop (maxprob)", "",
              "Calibrated on the holdout split, on one seeded half of the test split (figures on the other half), "
              "and certified on the holdout split with confidence 0.9 (Learn then Test).", ""]
    lines += _table(["run", "calibration", "accuracy", "final head", "cost", "paper (cost)"], [
        [name, CALIBRATION_TITLES[c], _fmt(r["early_exit"][c]["accuracy"]), _fmt(r["early_exit"][c]["final_accuracy"]),
         _fmt(r["early_exit"][c]["cost"], False), r["early_exit"][c]["cost"]["paper"]]
        for name, r in sdns for c in CALIBRATIONS])
    lines += ["## Best accuracy within 25/50/75 % of the backbone's cost", "",
              "Over every maxprob threshold, on the test split (the comparison of Zero Time Waste).", ""]
    lines += _table(["run", "budget", "accuracy", "cost", "paper"], [
        [name, f"{100 * row['budget']:.0f} %", _fmt(row["accuracy"]), _fmt(row["cost"], False),
         row["accuracy"]["paper"]] for name, r in sdns for row in r["budgets"]])
    lines += ["## Overthinking", "",
              "Wasteful: share of samples an IC before the final head already gets right. Destructive: share of the "
              "final head's mistakes an earlier IC got right.", ""]
    lines += _table(["run", "wasteful", "paper", "destructive", "paper"], [
        [name, _fmt(r["overthinking"]["wasteful"]), r["overthinking"]["wasteful"]["paper"],
         _fmt(r["overthinking"]["destructive"]), r["overthinking"]["destructive"]["paper"]] for name, r in sdns])
    lines += ["## Confusion as an error indicator", "", "AUROC for telling the final head's mistakes from its "
              "right answers.", ""]
    lines += _table(["run", "confusion score", "paper", "1 - max softmax", "paper"], [
        [name, _fmt(r["confusion"]["auroc_confusion"], False), r["confusion"]["auroc_confusion"]["paper"],
         _fmt(r["confusion"]["auroc_max_softmax"], False), r["confusion"]["auroc_max_softmax"]["paper"]]
        for name, r in sdns])
    lines += _backdoor_lines(t["backdoor"]) + _answer_lines(t["answer"]) + _paper_lines(t["paper_figures"])
    return "\n".join(lines)


def _paper_lines(figures: list[dict[str, Any]]) -> list[str]:
    lines = ["## The paper's figures", "", f"Every figure the tables attribute to {PAPER_SHORT}, with the words that "
             "state it; no other cell has one.", ""]
    return lines + _table(["cell", "figure", "the paper's words", "where", "scope"], [
        [f["cell"], f["text"], f"“{f['quote']}”", f["citation"], f["scope"]] for f in figures])


def _recipe(recipe: dict[str, Any] | None) -> str:
    if recipe is None:
        return "— (not started)"
    return f"{recipe['optimizer']} lr {recipe['lr']:g}, {recipe['schedule']} schedule, batch {recipe['batch_size']}"


def _backdoor_lines(b: dict[str, Any] | None) -> list[str]:
    if b is None:
        return []
    lines = ["## Backdoor study", ""]
    if "missing" in b:
        return lines + [f"— ({b['missing']})", ""]
    rows = [("accuracy on triggered inputs (true labels), CNN", "triggered_accuracy_cnn", True),
            ("accuracy on triggered inputs (true labels), early exit", "triggered_accuracy_early_exit", True),
            ("attack success rate, CNN", "attack_success_rate", True),
            ("clean accuracy, backdoored CNN", "clean_accuracy_cnn", True),
            ("early-exit cost on triggered inputs", "early_exit_cost_triggered", False),
            ("AUROC of confusion, triggered vs clean", "detection_auroc_confusion", False),
            ("AUROC of 1 - max softmax, triggered vs clean", "detection_auroc_max_softmax", False)]
    return lines + _table(["figure", "ours", "paper"], [[title, _fmt(b[key], pct), b[key]["paper"]]
                                                        for title, key, pct in rows])


def _answer_lines(a: dict[str, Any]) -> list[str]:
    lines = ["## The answer", "", a["question"], "",
             f"The budget {'is' if a['equal_budget'] else 'is NOT'} equal at this scale. Paper: {a['paper']}.", ""]
    rows = []
    for way, comparisons in a["comparisons"].items():
        for figure, c in comparisons.items():
            pct = figure == "final accuracy"
            show = lambda v: "—" if v is None else (f"{100 * v:.2f} %" if pct else f"{v:.3f}")  # noqa: E731
            rows.append([f"{way} beats ic-only", figure, c["verdict"], show(c["value"]), show(c["ic_only"])])
    return lines + _table(["question", "figure", "verdict", "theirs", "ic-only"], rows)
