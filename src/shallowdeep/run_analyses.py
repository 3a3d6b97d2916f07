"""The paper's analyses of a run as the result dicts that its run folder keeps: one owner for the commands
``evaluate``, ``early-exit``, ``overthinking`` and ``confusion`` and for ``reproduce``, which prints none of them.
Each takes the run's data set (see :func:`shallowdeep.outputs.load_run_data`) and returns the result without
its ``run`` entry, which the caller names as the user gave it; :mod:`shallowdeep.run_results` writes them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .calibration_data import CalibrationData, calibration_outputs
from .choices import CONFUSION_BINS, CONFUSION_TRAIN_SAMPLES
from .data import Splits
from .errors import SettingError
from .exit_outputs import ExitOutputs
from .exit_outputs import exit_names
from .exits import DEFAULT_MAX_DROP, POLICIES, calibrate, certify, early_exit_result
from .outputs import load_outputs, load_train_sample
from .run import Run

CONFUSION_SAMPLE_SEED = 0  # the seed of the training images that normalise the confusion score


def _outputs(run: Run, split: str, device: torch.device, splits: Splits) -> ExitOutputs:
    """The run's per-exit outputs on ``split``; a one-line error when it holds no image (no figure is defined)."""
    outputs = load_outputs(run, split, device, splits)
    if outputs.labels.size == 0:
        why = " (the run's holdout fraction is 0)" if split == "holdout" else ""
        raise SettingError(f"the run's {split} split is empty{why}; choose another split", "split")
    return outputs


def evaluation(run: Run, split: str, device: torch.device, splits: Splits) -> dict[str, Any]:
    """Every exit's top-1, top-5 and cost on ``split``."""
    from .evaluate import exit_table

    outputs = _outputs(run, split, device, splits)
    rows = exit_table(outputs, run.config["model"]["exits"])
    return {"split": split, "images": int(len(outputs.labels)), "backbone_flops": outputs.backbone_flops,
            "exits": rows, "top1": rows[-1]["top1"], "top5": rows[-1]["top5"]}


def overthinking(run: Run, split: str, device: torch.device, splits: Splits) -> dict[str, Any]:
    """The wasteful and destructive effects on ``split``."""
    from .analysis import overthinking as measure

    outputs = _outputs(run, split, device, splits)
    names = exit_names(len(outputs.exit_flops), run.config["model"].get("exits"))
    return {"split": split, **measure(outputs, names)}


def confusion(run: Run, split: str, device: torch.device, splits: Splits,
              train_samples: int = CONFUSION_TRAIN_SAMPLES, bins: int = CONFUSION_BINS) -> dict[str, Any]:
    """The confusion score as an error indicator on ``split``, normalised on a seeded random sample of
    ``train_samples`` training images (0: all of them)."""
    from .analysis import confusion_report

    outputs = _outputs(run, split, device, splits)
    train = load_train_sample(run, train_samples, CONFUSION_SAMPLE_SEED, device, splits)
    report = confusion_report(train, outputs, bins)
    sampled, total = report["normalisation"]["train_samples"], len(splits.train)
    report["normalisation"].update(train_split_images=total,
                                   sample_seed=CONFUSION_SAMPLE_SEED if sampled < total else None)
    normalised_on = (f"a seeded random sample of {sampled} of the {total} training images (un-augmented)"
                     if sampled < total else f"the {total} training images (un-augmented)")
    return {"split": split, "normalised_on": normalised_on, **report}


def early_exit(run: Run, choice: CalibrationData, device: torch.device, splits: Splits, policy: str = "maxprob",
               max_drop: float | None = None, budget: float | None = None, confidence: float | None = None,
               per_exit: bool = False, data_dir: str | Path | None = None) -> dict[str, Any]:
    """The threshold of ``policy`` chosen on ``choice``'s data by its criterion (see
    :func:`shallowdeep.exits.calibrate`), with its figures on the calibration and the test data."""
    calibration, test, calibrated_on = calibration_outputs(run, choice, splits, device, data_dir)
    drop = DEFAULT_MAX_DROP if max_drop is None else max_drop
    criterion: dict[str, Any] = {"budget": budget} if budget is not None else {"max_drop": drop}
    if confidence is not None and not per_exit:
        certificate = certify(calibration, POLICIES[policy], drop, confidence)
        chosen = certificate.policy
        criterion.update(certificate.as_dict(confidence))
    else:
        chosen = calibrate(calibration, policy, max_drop=max_drop, budget=budget, confidence=confidence,
                           per_exit=per_exit)
    if per_exit:
        criterion["per_exit"] = True
    if test is None:
        test = load_outputs(run, "test", device, splits=splits)
    layers = run.config["model"].get("exits")  # early_exit_result names the exits after them
    return early_exit_result(chosen, criterion, calibrated_on, calibration, test, layers)


def tradeoff_png(result: dict[str, Any]) -> bytes:
    """An early-exit result's test trade-off curve with its chosen point, the final head and the oracle."""
    from .report.plots import tradeoff_plot

    test, curve = result["test"], result["curve"]["test"]
    point = lambda s: (s["flops_fraction"], s["accuracy"])  # noqa: E731
    data = "the other half of the test" if result["calibrated_on"]["source"] == "test-half" else "the test"
    label = f"{result['policy']} policy on {data} data"
    return tradeoff_plot([(label, curve["flops_fraction"], curve["accuracy"])], point(test["oracle"]),
                         point(test["final_head"]), [(result["key"], point(test["early_exit"]))])
