"""Report sections built from what other commands wrote: ``early-exit.json`` and ``backdoor.json``."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..exits import MaxProb, curve
from ..io import read_json
from . import html, plots
from .cells import flatten, fmt, pct
from .context import ReportContext
from .tradeoff import read_early_exit, stored_curve, stored_point

NO_THRESHOLD = "No threshold chosen yet: run `shallowdeep early-exit RUN` to calibrate one on the holdout split"
NO_CURVE = "early-exit.json holds no test curve this report can read"


def tradeoff_section(ctx: ReportContext, over: dict[str, Any]) -> str:
    """The early-exit curve with the chosen point, the final head alone and the oracle.

    From ``RUN/early-exit.json`` when it holds a test curve; otherwise the paper's max-probability
    policy swept over q in [0, 1] on the test outputs, with no chosen point.
    """
    test = ctx.outputs["test"]
    final = (1.0, float(test.correct[-1].mean()))
    oracle = (over["oracle"]["relative_cost"], over["oracle"]["accuracy"])
    stored = read_early_exit(ctx.run.path)
    recorded = stored_curve(stored) if stored else None
    parts = []
    if recorded is not None:
        cost, accuracy = recorded
        label = f"{stored.get('policy', 'early exit')} policy (from early-exit.json)"
        chosen = stored_point(stored, "early_exit")
        oracle = stored_point(stored, "oracle") or oracle
        final = stored_point(stored, "final_head") or final
    else:
        swept = curve(test, MaxProb, np.linspace(0.0, 1.0, 201))
        cost, accuracy, chosen = swept.flops_fraction.tolist(), swept.accuracy.tolist(), None
        label = "max-probability policy, q in [0, 1]"
        parts.append(html.paragraph(f"{NO_CURVE if stored else NO_THRESHOLD}. The curve below sweeps the paper's "
                                    "max-probability threshold q on the test split.", note=True))
    ctx.summary["early_exit"] = {
        "source": "early-exit.json" if recorded is not None else "max-probability sweep on test",
        "curve": {"flops_fraction": list(cost), "accuracy": list(accuracy)},
        "chosen": chosen, "oracle": oracle, "final_head": final,
    }
    if stored:
        parts += _early_exit_tables(stored)
        drawn = ctx.run.path / "early-exit.png"
        if recorded is None and drawn.is_file():
            parts.append(html.figure(drawn.read_bytes(), "early-exit.png, as the early-exit command drew it."))
    caption = ("Accuracy against average cost on the test split; the oracle lets every sample leave at its "
               "earliest correct exit.")
    parts.append(ctx.add_figure("tradeoff", plots.tradeoff_plot(cost, accuracy, oracle, final, chosen, label), caption))
    return html.section("Early exit: the trade-off", parts, "early-exit")


def backdoor_section(ctx: ReportContext) -> str | None:
    """The backdoor study's numbers and ``RUN/backdoor*.png`` figures, shown as they are, when
    ``RUN/backdoor.json`` exists; None otherwise."""
    path = ctx.run.path / "backdoor.json"
    if not path.is_file():
        return None
    data = read_json(path, "run shallowdeep backdoor again")
    figures = sorted(ctx.run.path.glob("backdoor*.png"))
    parts = [html.table(["backdoor.json", "value"], [(k, fmt(v)) for k, v in flatten(data).items()])]
    parts += [html.figure(png.read_bytes(), png.name) for png in figures]
    ctx.summary["backdoor"] = {"source": "backdoor.json", "figures": [p.name for p in figures]}
    return html.section("Backdoor", parts, "backdoor")


def _early_exit_tables(stored: dict[str, Any]) -> list[str]:
    """The chosen policy's figures: a summary when early-exit.json has the usual layout, else every value."""
    rows = []
    for split in ("calibration", "test"):
        entries = stored.get(split) if isinstance(stored.get(split), dict) else {}
        for name in ("early_exit", "final_head", "oracle"):
            entry = entries.get(name)
            if isinstance(entry, dict):
                rows.append((split, name.replace("_", " "), pct(entry.get("accuracy")),
                             fmt(entry.get("flops_fraction"))))
    if not rows:
        scalars = [(k, fmt(v)) for k, v in flatten(stored).items() if not isinstance(v, list)]
        return [html.table(["early-exit.json", "value"], scalars)]
    source = stored.get("calibrated_on") if isinstance(stored.get("calibrated_on"), dict) else {}
    chosen = (f"{stored.get('policy', '?')} threshold {fmt(stored.get('threshold'))} chosen on the "
              f"{source.get('split', '?')} split of {source.get('dataset', '?')} ({source.get('samples', '?')} "
              f"images, {source.get('source', '?')} data); criterion: {fmt(stored.get('criterion'))}.")
    parts = [html.paragraph(chosen)]
    if source.get("note"):
        parts.append(html.paragraph(f"{str(source['note']).capitalize()} (seed {fmt(source.get('seed'))}).", note=True))
    parts.append(html.table(["data", "", "accuracy", "cost (fraction of the backbone)"], rows))
    return parts + _budget_table(stored)


def _budget_table(stored: dict[str, Any]) -> list[str]:
    """The best accuracy within 25/50/75/100 % of the backbone's cost, when early-exit.json records it."""
    rows = []
    for split in ("calibration", "test"):
        entries = stored.get(split) if isinstance(stored.get(split), dict) else {}
        table = entries.get("best_at_budget")
        for entry in table if isinstance(table, list) else []:
            if isinstance(entry, dict):
                reached = entry.get("accuracy") is not None
                rows.append((split, pct(entry.get("budget")), pct(entry.get("accuracy")) if reached else "–",
                             fmt(entry.get("flops_fraction")), fmt(entry.get("threshold")) if reached
                             else str(entry.get("reason", "–"))))
    if not rows:
        return []
    caption = "Best accuracy within a share of the backbone's cost, over every threshold of the policy:"
    return [html.paragraph(caption),
            html.table(["data", "budget", "accuracy", "cost (fraction of the backbone)", "threshold"], rows)]
