"""The backdoor study's figures as PNG bytes (matplotlib's Agg canvas, no pyplot state)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..report.plots import ACCENT, MUTED, SECOND, confusion_histogram, png_bytes


def detection_histogram(detection: dict[str, Any]) -> bytes:
    """Histograms of the normalised confusion of clean and triggered test inputs, each as a share of its group."""
    auroc = detection["auroc"]
    title = "Confusion of clean and triggered inputs" + ("" if auroc is None else f" (AUROC {auroc:.3f})")
    return confusion_histogram(detection["histogram"], {"clean": "clean", "triggered": "triggered"}, title,
                               "confusion (z-normalised on the clean training split)")


def exit_plot(result: dict[str, Any], exit_names: Sequence[str], exit_flops: Sequence[int]) -> bytes:
    """Per exit: clean accuracy, accuracy on triggered inputs (true labels) and the share of triggered inputs
    sent to the target class; the early-exit SDN's accuracy on triggered inputs as a marker."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 3.6))
    ax = fig.add_subplot()
    cost = np.asarray(exit_flops, dtype=float) / exit_flops[-1]
    clean, triggered = result["clean"]["per_exit"], result["triggered"]["per_exit"]
    ax.plot(cost, np.asarray(clean["accuracy"]) * 100, "o-", color=ACCENT, label="clean: accuracy")
    ax.plot(cost, np.asarray(triggered["accuracy"]) * 100, "o-", color=SECOND, label="triggered: accuracy")
    ax.plot(cost, np.asarray(triggered["target_share"]) * 100, "s--", color=MUTED, label="triggered: sent to target")
    early = result["early_exit"]["triggered_test"]
    ax.plot(early["flops_fraction"], early["accuracy"] * 100, "*", color="black", markersize=13,
            label="triggered: early exit")
    for name, x, y in zip(exit_names, cost, triggered["accuracy"]):
        ax.annotate(name, (x, y * 100), textcoords="offset points", xytext=(3, 5), fontsize=7)
    ax.set(xlabel="cost (fraction of the backbone's FLOPs)", ylabel="%", ylim=(-3, 103),
           title="Every exit on clean and triggered test inputs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.17), ncol=2)
    return png_bytes(fig)
