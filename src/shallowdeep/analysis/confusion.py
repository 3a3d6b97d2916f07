"""The confusion score (SDN paper, section 5.2): how much the internal classifiers disagree with the final head.

``confusion(x) = sum over internal exits i of || softmax(IC_i(x)) - softmax(final(x)) ||_1``,
z-normalised with the mean and standard deviation of the scores on the un-augmented training
split. A high score flags a likely mistake of the final head (or a backdoor's trigger); its AUROC as
a detector is set against the AUROC of the plain confidence ``1 - max softmax`` of the final head.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from ..errors import UserError
from ..exit_outputs import ExitOutputs
from .probs import logit_stack, softmax


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
    """AUROC of ``score`` for telling errors (or any positives) from the rest; None unless both occur."""
    is_error = np.asarray(is_error, dtype=bool)
    if is_error.all() or not is_error.any():
        return None
    return float(roc_auc_score(is_error, score))


def confusion_detector(train_outputs: ExitOutputs, outputs: ExitOutputs, positive: np.ndarray,
                       groups: tuple[str, str], bins: int = 30) -> dict[str, Any]:
    """The normalised confusion score of ``outputs`` as a detector of the ``positive`` samples (a boolean
    mask), next to the final head's plain ``1 - max softmax`` (JSON-ready dict).

    Normalised with the statistics of ``train_outputs``; ``groups`` names the negatives and the positives
    in the mean scores and the histograms, which share their bin edges.
    """
    mean, std = confusion_statistics(train_outputs)
    scores = normalised_confusion(outputs, mean, std)
    uncertainty = 1.0 - softmax(outputs.logits[-1]).max(-1)
    positive = np.asarray(positive, dtype=bool)
    members = dict(zip(groups, (~positive, positive)))
    edges = np.histogram_bin_edges(scores, bins=bins)
    return {
        "normalisation": {"mean": mean, "std": std, "train_samples": int(train_outputs.labels.size)},
        "auroc": {"confusion": error_auroc(positive, scores), "confidence": error_auroc(positive, uncertainty)},
        "mean_confusion": {g: float(scores[m].mean()) if m.any() else None for g, m in members.items()},
        "histogram": {"edges": [float(e) for e in edges],
                      **{g: [int(c) for c in np.histogram(scores[m], bins=edges)[0]] for g, m in members.items()}},
    }


def confusion_report(train_outputs: ExitOutputs, test_outputs: ExitOutputs, bins: int = 30) -> dict[str, Any]:
    """The confusion score as an indicator of the final head's mistakes on ``test_outputs`` (JSON-ready dict),
    see :func:`confusion_detector`."""
    if test_outputs.labels.size == 0:
        raise UserError("the confusion report needs at least one test sample; the split is empty")
    is_error = ~test_outputs.correct[-1]
    found = confusion_detector(train_outputs, test_outputs, is_error, ("correct", "wrong"), bins)
    return {"normalisation": found.pop("normalisation"), "samples": int(is_error.size),
            "final_accuracy": float(1.0 - is_error.mean()), "final_mistakes": int(is_error.sum()), **found}
