"""Analyses of per-exit outputs: overthinking, the confusion score, Grad-CAM of disagreements."""

from .confusion import confusion_report, confusion_scores, confusion_statistics, error_auroc, normalised_confusion
from .overthinking import earliest_correct_exit, oracle_flops, overthinking

__all__ = [
    "confusion_report",
    "confusion_scores",
    "confusion_statistics",
    "earliest_correct_exit",
    "error_auroc",
    "normalised_confusion",
    "oracle_flops",
    "overthinking",
]
