"""The backdoor study's figures, computed from stored per-exit outputs.

- attack success rate (ASR): the share of triggered inputs whose true class is not the target that
  are classified as the target;
- accuracy on triggered inputs against their TRUE labels, of the final head (the backdoored CNN)
  and of early exit at a threshold chosen on clean held-out data;
- the confusion score of triggered and clean inputs (z-normalised with the clean training split's
  statistics) and its AUROC as a trigger detector (triggered inputs are the positives).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..analysis import confusion_detector
from ..errors import UserError
from ..exits import calibrate, simulate, summarise
from ..exit_outputs import ExitOutputs


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Share of ``predictions`` equal to ``labels``."""
    if len(labels) == 0:
        raise UserError("accuracy of an empty set of samples is undefined")
    return float((np.asarray(predictions) == np.asarray(labels)).mean())


def attack_success_rate(predictions: np.ndarray, labels: np.ndarray, target: int) -> float:
    """Share of the samples whose true label is not ``target`` that are predicted as ``target``."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    victims = labels != target
    if not victims.any():
        raise UserError(f"no samples outside the target class {target}: the attack success rate is undefined")
    return float((predictions[victims] == target).mean())


def per_exit(outputs: ExitOutputs, target: int) -> dict[str, list[float]]:
    """Every exit's accuracy (true labels) and share of samples it assigns to ``target``."""
    predictions = outputs.predictions
    return {"accuracy": [accuracy(p, outputs.labels) for p in predictions],
            "target_share": [float((p == target).mean()) for p in predictions]}


def detection(train: ExitOutputs, clean: ExitOutputs, triggered: ExitOutputs, bins: int = 30) -> dict[str, Any]:
    """The normalised confusion score as a detector of triggered inputs, next to ``1 - max softmax``
    (:func:`shallowdeep.analysis.confusion_detector` on the clean inputs followed by the triggered ones)."""
    both = ExitOutputs(np.concatenate([clean.logits, triggered.logits], axis=1),
                       np.r_[clean.labels, triggered.labels], clean.exit_flops, clean.backbone_flops)
    is_triggered = np.r_[np.zeros(clean.labels.size, bool), np.ones(triggered.labels.size, bool)]
    found = confusion_detector(train, both, is_triggered, ("clean", "triggered"), bins)
    return {"normalisation": found["normalisation"], "auroc": found["auroc"]["confusion"],
            "auroc_confidence": found["auroc"]["confidence"], "mean_confusion": found["mean_confusion"],
            "histogram": found["histogram"]}


def backdoor_figures(train: ExitOutputs, holdout: ExitOutputs, clean: ExitOutputs, triggered: ExitOutputs,
                     target: int, policy: str = "maxprob", max_drop: float | None = None,
                     bins: int = 30) -> dict[str, Any]:
    """All figures of a backdoored SDN from its outputs on the clean training, holdout and test splits and
    on triggered test inputs (outside the target class, true labels). The early-exit threshold is chosen on
    the clean ``holdout`` outputs by :func:`shallowdeep.exits.calibrate`."""
    if holdout.labels.size == 0:
        raise UserError("the early-exit threshold is chosen on the holdout split, which is empty; "
                        "use a positive holdout fraction")
    if (triggered.labels == target).any():
        raise UserError("triggered inputs must exclude the target class")
    chosen = calibrate(holdout, policy, max_drop=max_drop)
    clean_exit = simulate(clean, chosen)
    triggered_exit = simulate(triggered, chosen)
    final_clean = accuracy(clean.predictions[-1], clean.labels)
    final_triggered = accuracy(triggered.predictions[-1], triggered.labels)
    early_triggered = summarise(triggered, triggered_exit)
    return {
        "early_exit": {"policy": chosen.name, "threshold": chosen.threshold,
                       "criterion": {"max_drop": 0.01 if max_drop is None else max_drop},
                       "calibrated_on": {"split": "holdout (clean)", "samples": int(holdout.labels.size)},
                       "clean_test": summarise(clean, clean_exit).as_dict(),
                       "triggered_test": early_triggered.as_dict()},
        "clean": {"samples": int(clean.labels.size), "accuracy_cnn": final_clean,
                  "accuracy_early_exit": accuracy(clean_exit.predictions, clean.labels),
                  "per_exit": per_exit(clean, target)},
        "attack": {"success_rate": attack_success_rate(triggered.predictions[-1], triggered.labels, target),
                   "success_rate_early_exit": attack_success_rate(triggered_exit.predictions, triggered.labels,
                                                                  target)},
        "triggered": {"samples": int(triggered.labels.size), "accuracy_cnn": final_triggered,
                      "accuracy_early_exit": early_triggered.accuracy,
                      "recovered_points": 100 * (early_triggered.accuracy - final_triggered),
                      "per_exit": per_exit(triggered, target)},
        "detection": detection(train, clean, triggered, bins),
    }
