"""Report sections built from what other commands kept in the run: the early-exit results and the backdoor study's
figures (read through :mod:`shallowdeep.run_results`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..exits import MaxProb, curve
from ..run_folder import BACKDOOR_JSON, EARLY_EXIT_PNG
from ..run_results import latest_early_exit_plot, read_backdoor, read_early_exits, stored_curve, stored_point
from . import html, plots
from .cells import PERCENT, flatten, fmt, pct
from .context import ReportContext

NO_THRESHOLD = "No threshold chosen yet: run `shallowdeep early-exit RUN` to calibrate one on the holdout split"
NO_CURVE = "No early-exit result holds a test curve this report can read"
SWEEP = "max-probability policy, q in [0, 1]"


def tradeoff_section(ctx: ReportContext, over: dict[str, Any]) -> str:
    """Every early-exit result the early-exit command kept, in one table, and the trade-off curves with each
    result's chosen point marked and numbered, the final head alone and the oracle.

    The curves come from the results (one per policy and reported data); without any, the paper's
    max-probability policy is swept over q in [0, 1] on the test outputs.
    """
    test = ctx.outputs["test"]
    final = (1.0, float(test.correct[-1].mean()))
    oracle = (over["oracle"]["relative_cost"], over["oracle"]["accuracy"])
    results = read_early_exits(ctx.run.path)
    marked = [r for r in results if stored_point(r, "early_exit") is not None]
    numbers = {r["key"]: number for number, r in enumerate(marked, 1)}
    curves = _curves(results)
    swept, parts = not curves, []
    if swept:
        sweep = curve(test, MaxProb, np.linspace(0.0, 1.0, 201))
        curves = [(SWEEP, sweep.flops_fraction.tolist(), sweep.accuracy.tolist())]
        parts.append(html.paragraph(f"{NO_CURVE if results else NO_THRESHOLD}. The curve below sweeps the paper's "
                                    "max-probability threshold q on the test split.", note=True))
    ctx.summary["early_exit"] = {
        "source": "max-probability sweep on test" if swept else "early-exit results",
        "curves": [{"label": label, "flops_fraction": list(cost), "accuracy": list(accuracy)}
                   for label, cost, accuracy in curves],
        "results": [{"number": numbers.get(r["key"]), "key": r["key"], "chosen": stored_point(r, "early_exit")}
                    for r in results],
        "oracle": oracle, "final_head": final,
    }
    if results:
        parts += _early_exit_tables(results, numbers)
    drawn = latest_early_exit_plot(ctx.run.path) if results and swept else None
    if drawn is not None:
        parts.append(html.figure(drawn, f"{EARLY_EXIT_PNG}, as the early-exit command drew it."))
    caption = ("Accuracy against average cost on the test split (a test-half result: on its other half), each "
               "result's chosen threshold numbered as in the table; the oracle lets every sample leave at its "
               "earliest correct exit.")
    png = plots.tradeoff_plot(curves, oracle, final, [(r["key"], stored_point(r, "early_exit")) for r in marked])
    parts.append(ctx.add_figure("tradeoff", png, caption))
    return html.section("Early exit: the trade-off", parts, "early-exit")


def backdoor_section(ctx: ReportContext) -> str | None:
    """The backdoor study's numbers and figures, shown as they are, when the run holds them; None otherwise."""
    found = read_backdoor(ctx.run.path)
    if found is None:
        return None
    data, figures = found
    parts = [html.table([BACKDOOR_JSON, "value"], [(k, fmt(v)) for k, v in flatten(data).items()])]
    parts += [html.figure(png, name) for name, png in figures]
    ctx.summary["backdoor"] = {"source": BACKDOOR_JSON, "figures": [name for name, _ in figures]}
    return html.section("Backdoor", parts, "backdoor")


def _curves(results: list[dict[str, Any]]) -> list[tuple[str, list[float], list[float]]]:
    """One recorded test curve per policy and reported data, labelled with both."""
    curves = {}
    for result in results:
        recorded = stored_curve(result)
        label = f"{result.get('policy', 'early exit')} policy" + _on_half(result)
        if recorded is not None and label not in curves:
            curves[label] = recorded
    return [(label, cost, accuracy) for label, (cost, accuracy) in curves.items()]


def _early_exit_tables(results: list[dict[str, Any]], numbers: dict[str, int]) -> list[str]:
    """Every result in one table, a result's note (a test half chose its threshold) marked on its row and given
    under the table, the final head and the oracle on the same data and the best accuracy within each budget; a
    result with neither calibration nor test figures as a table of all its values."""
    tabled = [r for r in results if _has_figures(r)]
    marks = {note: "*" * i for i, note in enumerate(sorted({_note(r) for r in tabled} - {""}), 1)}
    parts = []
    if tabled:
        rows = [_result_row(r, numbers.get(r["key"]), marks.get(_note(r), "")) for r in tabled]
        parts += [html.paragraph("Every early-exit result kept in the run (RUN/early-exit/), numbered as on the plot; "
                                 "each threshold was chosen on its calibration data and is reported on other data. "
                                 "Cost: average FLOPs per image as a share of the backbone's."),
                  html.table(["#", "criterion", "policy", "threshold", "data", "accuracy", "cost", "data", "accuracy",
                              "cost"], rows, [(None, 4), ("calibration", 3), ("reported", 3)]),
                  *(html.paragraph(f"{mark} Results marked {mark}: {note}", note=True) for note, mark in marks.items()),
                  html.table(["data", "final head accuracy", "oracle accuracy", "oracle cost"],
                             _reference_rows(results))]
    odd = [html.table([f"early-exit result {r['key']}", "value"],
                      [(k, fmt(v)) for k, v in flatten(r).items() if not isinstance(v, list)])
           for r in results if not _has_figures(r)]
    return parts + odd + _budget_table(results)


def _has_figures(result: dict[str, Any]) -> bool:
    return any(stored_point(result, "early_exit", split) is not None for split in ("calibration", "test"))


def _result_row(result: dict[str, Any], number: int | None, mark: str) -> tuple[str, ...]:
    """The table row of one result, ``mark`` (if any) after the data it is reported on."""
    calibration, reported = (stored_point(result, "early_exit", split) for split in ("calibration", "test"))
    reported_on = f"{_reported_on(result)}\u00a0{mark}" if mark else _reported_on(result)
    return (fmt(number), _criterion(result.get("criterion")), str(result.get("policy", "?")),
            fmt(result.get("threshold")), _calibration_data(result), *_figures(calibration),
            reported_on, *_figures(reported))


def _note(result: dict[str, Any]) -> str:
    """The note the early-exit command left on how the result's data were split, with its seed; '' if none."""
    note = _source(result).get("note")
    return f"{note} (seed {fmt(_source(result).get('seed'))})." if note else ""


def _reference_rows(results: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    """The final head alone and the oracle on each calibration and reported data set, once each."""
    rows = {}
    for result in results:
        for split, data in (("calibration", _calibration_data(result)), ("test", _reported_on(result))):
            final, best = stored_point(result, "final_head", split), stored_point(result, "oracle", split)
            if final is not None and best is not None:
                rows.setdefault(data, (data, pct(final[1]), pct(best[1]), pct(best[0])))
    return list(rows.values())


def _figures(point: tuple[float, float] | None) -> tuple[str, str]:
    """(accuracy, cost) cells of a (cost fraction, accuracy) point."""
    return ("–", "–") if point is None else (pct(point[1]), pct(point[0]))


def _criterion(criterion: Any) -> str:
    """How the threshold was chosen, in words."""
    if not isinstance(criterion, dict):
        return fmt(criterion)
    parts = []
    if criterion.get("max_drop") is not None:
        parts.append(f"accuracy drop at most {100 * criterion['max_drop']:.1f} points")
    if criterion.get("budget") is not None:
        parts.append(f"cost at most {pct(criterion['budget'])}")
    if criterion.get("confidence") is not None:
        outcome = "certified" if criterion.get("certified") else "none certified, the most cautious kept"
        parts.append(f"with confidence {fmt(criterion['confidence'])} ({outcome})")
    return ", ".join(parts) or fmt(criterion)


def _source(result: dict[str, Any]) -> dict[str, Any]:
    return result["calibrated_on"] if isinstance(result.get("calibrated_on"), dict) else {}


def _calibration_data(result: dict[str, Any]) -> str:
    """The data that chose the threshold, in words."""
    source = _source(result)
    images = f"{fmt(source.get('samples'))} images"
    if source.get("source") == "test-half":
        return f"one half of test, seed {fmt(source.get('seed'))} ({images})"
    if source.get("source") == "separate":
        return f"{fmt(source.get('split'))} of {fmt(source.get('data_dir'))} ({fmt(source.get('dataset'))}, {images})"
    return f"{fmt(source.get('split'))} split of {fmt(source.get('dataset'))} ({images})"


def _reported_on(result: dict[str, Any]) -> str:
    """The data the result's figures are on, in words."""
    test = result.get("test") if isinstance(result.get("test"), dict) else {}
    images = f" ({test['samples']} images)" if "samples" in test else ""
    return ("other half of test" if _source(result).get("source") == "test-half" else "test") + images


def _on_half(result: dict[str, Any]) -> str:
    source = _source(result)
    return f", other half of test (seed {fmt(source.get('seed'))})" if source.get("source") == "test-half" else ""


def _budget_table(results: list[dict[str, Any]]) -> list[str]:
    """The best accuracy within 25/50/75/100 % of the backbone's cost, once per policy, calibration data and
    reported data, when the results record it."""
    rows, seen = [], set()
    for result in results:
        policy = str(result.get("policy", "?"))
        for split, data in (("calibration", _calibration_data(result)), ("test", _reported_on(result))):
            entries = result.get(split) if isinstance(result.get(split), dict) else {}
            table = entries.get("best_at_budget")
            if (policy, data) in seen or not isinstance(table, list):
                continue
            seen.add((policy, data))
            rows += [(policy, data, *row) for row in _budget_rows([e for e in table if isinstance(e, dict)])]
    if not rows:
        return []
    caption = ("Best accuracy within a share of the backbone's cost, over every threshold of the policy (budgets "
               "with the same best threshold share a row):")
    return [html.paragraph(caption), html.table(["policy", "data", "budget", "accuracy", "cost", "threshold"], rows)]


def _budget_rows(entries: list[dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    """(budget, accuracy, cost, threshold or why none fits) cells of one best-at-budget table, one row per run of
    consecutive budgets with the same outcome, its budgets as a range (75.0–100.0 %)."""
    runs: list[tuple[list[Any], tuple[Any, ...]]] = []
    for entry in entries:
        outcome = tuple(entry.get(k) for k in ("accuracy", "flops_fraction", "threshold", "reason"))
        if runs and runs[-1][1] == outcome:
            runs[-1][0].append(entry.get("budget"))
        else:
            runs.append(([entry.get("budget")], outcome))
    rows = []
    for budgets, (accuracy, cost, threshold, reason) in runs:
        span = pct(budgets[0]) if len(budgets) == 1 else f"{pct(budgets[0]).removesuffix(PERCENT)}–{pct(budgets[-1])}"
        rows.append((span, pct(accuracy), pct(cost), fmt(threshold) if accuracy is not None else str(reason or "–")))
    return rows
