"""The confusion score (SDN paper, section 5.2): how much the internal classifiers disagree with the final head.

``confusion(x) = sum over internal exits i of || softmax(IC_i(x)) - softmax(final(x)) ||_1``,
z-normalised with the mean and standard deviation of the scores on the un-augmented training
split. A high score flags a likely mistake of the final head; its AUROC for separating the final
head's mistakes from its correct answers is set against the AUROC of the plain confidence
``1 - max softmax`` of the final head.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.metrics import roc_auc_score

from ..errors import UserError
from .probs import logit_stack, softmax

if TYPE_CHECKING:
    from ..exit_outputs import ExitOutputs


def confusion_scores(outputs: Any) -> np.ndarray:
    """The un-normalised confusion score of every sample, float64 (samples,).

    ``outputs`` is the list of per-exit logits (each (samples, classes), NumPy or torch, the final
    head last), one (exits, samples, classes) array, or an ``ExitOutputs``.
    """
    probs = softmax(logit_stack(outputs))
    if probs.shape[0] < 2:
        raise UserError("the confusion score needs internal classifiers; only the final head's logits were given")
    return np.abs(probs[:-1] - probs[-1]).sum(-1).sum(0)


def confusion_statistics(train_outputs: Any) -> tuple[float, float]:
    """Mean and standard deviation of the confusion scores on the (un-augmented) training split."""
    scores = confusion_scores(train_outputs)
    if scores.size < 2:
        raise UserError("normalising the confusion score needs at least two training samples")
    mean, std = float(scores.mean()), float(scores.std())
    if std == 0:
        raise UserError("the confusion scores of the training split are all equal; they cannot be normalised")
    return mean, std


def normalised_confusion(outputs: Any, mean: float, std: float) -> np.ndarray:
    """Confusion scores of ``outputs`` z-normalised with the training split's ``mean`` and ``std``."""
    return (confusion_scores(outputs) - mean) / std


def error_auroc(is_error: np.ndarray, score: np.ndarray) -> float | None:
    """AUROC of ``score`` for telling errors (positives) from correct answers; None unless both occur."""
    is_error = np.asarray(is_error, dtype=bool)
    if is_error.all() or not is_error.any():
        return None
    return float(roc_auc_score(is_error, score))


def confusion_report(train_outputs: "ExitOutputs", test_outputs: "ExitOutputs", bins: int = 30) -> dict[str, Any]:
    """The confusion score as an error indicator on ``test_outputs`` (JSON-ready dict).

    Normalised with the training split's statistics; both AUROCs treat the final head's mistakes
    as positives. The histograms share their bin edges.
    """
    if test_outputs.labels.size == 0:
        raise UserError("the confusion report needs at least one test sample; the split is empty")
    mean, std = confusion_statistics(train_outputs)
    scores = normalised_confusion(test_outputs, mean, std)
    is_error = ~test_outputs.correct[-1]
    uncertainty = 1.0 - softmax(test_outputs.logits[-1]).max(-1)
    edges = np.histogram_bin_edges(scores, bins=bins)
    return {
        "normalisation": {"mean": mean, "std": std, "train_samples": int(train_outputs.labels.size)},
        "samples": int(scores.size),
        "final_accuracy": float(1.0 - is_error.mean()),
        "final_mistakes": int(is_error.sum()),
        "auroc": {"confusion": error_auroc(is_error, scores), "confidence": error_auroc(is_error, uncertainty)},
        "mean_confusion": {
            "correct": float(scores[~is_error].mean()) if (~is_error).any() else None,
            "wrong": float(scores[is_error].mean()) if is_error.any() else None,
        },
        "histogram": {
            "edges": [float(e) for e in edges],
            "correct": [int(c) for c in np.histogram(scores[~is_error], bins=edges)[0]],
            "wrong": [int(c) for c in np.histogram(scores[is_error], bins=edges)[0]],
        },
    }
