"""Analyses of per-exit outputs: overthinking, the confusion score, Grad-CAM of disagreements."""

from .confusion import (confusion_detector, confusion_report, confusion_scores, confusion_statistics, error_auroc,
                        normalised_confusion)
from .overthinking import overthinking

__all__ = [
    "confusion_detector",
    "confusion_report",
    "confusion_scores",
    "confusion_statistics",
    "error_auroc",
    "normalised_confusion",
    "overthinking",
]
