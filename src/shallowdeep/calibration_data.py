"""The data that choose an early-exit threshold, never the data it is reported on: the run's holdout (or training)
split, a separate labelled data set, or one seeded random half of the test split (the figures are then on the
other half). Each comes with a record of where it came from, as an early-exit result keeps it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .data import ImageData, Splits, load_dataset
from .errors import SettingError, UserError
from .exit_outputs import ExitOutputs
from .exits import HALVES_NOTE, index_hash, split_halves
from .outputs import compute_outputs, load_outputs
from .run import Run

SOURCES = ("holdout", "test-half")


@dataclass(frozen=True)
class CalibrationData:
    """Where the threshold is chosen. ``source`` 'holdout': the run's ``split`` (holdout by default, or train), or,
    with ``data_dir``, a separate data set of format ``dataset`` (its ``split``: train, holdout, test, or all, the
    default); 'test-half': the half of the run's test split that ``split_seed`` draws."""

    source: str = "holdout"
    split: str | None = None
    separate: Path | None = None
    dataset: str = "imagefolder"
    split_seed: int = 0


def calibration_outputs(run: Run, choice: CalibrationData, run_splits: Splits, device: str | torch.device = "cpu",
                        data_dir: str | Path | None = None
                        ) -> tuple[ExitOutputs, ExitOutputs | None, dict[str, Any]]:
    """The per-exit outputs that choose the threshold, the test outputs to report on when calibration took part of
    them (None: the whole test split), and the record of the calibration data. ``run_splits`` is the run's data,
    read from ``data_dir`` when it moved."""
    if choice.source not in SOURCES:
        raise SettingError(f"unknown calibration source '{choice.source}': choose one of {', '.join(SOURCES)}",
                           "source")
    where = str(data_dir) if data_dir else run.config["data"].get("data_dir")
    if choice.source == "test-half":
        if choice.separate is not None or choice.split is not None:
            raise SettingError("calibrating on a test half takes its data from the test split; it takes no "
                               "separate data set or split", "source", "separate", "split")
        return (*_test_halves(run, choice.split_seed, run_splits, device, where),)
    if choice.separate is None or is_run_data(run, choice, data_dir):
        split = choice.split or "holdout"
        if split in ("test", "all"):
            raise SettingError(f"calibrating on the {split} split would calibrate on the run's test set; use holdout "
                               "or train, or a separate data set", "split", "separate")
        outputs = load_outputs(run, split, device, splits=run_splits)
        if outputs.labels.size == 0:
            why = " (the run's holdout fraction is 0)" if split == "holdout" else ""
            raise SettingError(f"the run's {split} split is empty{why}; calibrate on the train split or on a separate "
                               "data set", "split", "separate")
        return outputs, None, {"source": "run", "dataset": run.config["data"].get("name"), "data_dir": where,
                               "split": split, "samples": int(outputs.labels.size)}
    return (*_separate(run, choice, run_splits, device), )


def _test_halves(run: Run, seed: int, run_splits: Splits, device: str | torch.device,
                 where: str | None) -> tuple[ExitOutputs, ExitOutputs, dict[str, Any]]:
    """The calibration half and the evaluation half of the run's test outputs, and their record."""
    test = load_outputs(run, "test", device, splits=run_splits)
    calibration, evaluation = split_halves(test.labels.size, seed)
    return test.subset(calibration), test.subset(evaluation), {
        "source": "test-half", "dataset": run.config["data"].get("name"), "data_dir": where, "split": "test",
        "seed": seed, "samples": int(calibration.size), "evaluation_samples": int(evaluation.size),
        "calibration_indices_sha256": index_hash(calibration), "note": HALVES_NOTE}


def _separate(run: Run, choice: CalibrationData, run_splits: Splits,
              device: str | torch.device) -> tuple[ExitOutputs, None, dict[str, Any]]:
    """The outputs of a separate labelled data set, read as the run reads its own (image size, channels,
    normalisation), and its record."""
    split = choice.split or "all"
    other = load_dataset(choice.dataset, choice.separate, **_image_options(run, choice))
    for what, theirs, ours in (("classes", other.spec.classes, run_splits.spec.classes),
                               ("image shape", other.spec.input_shape, run_splits.spec.input_shape)):
        if theirs != ours:
            raise UserError(f"calibration data {choice.separate} does not match the run's {what} "
                            f"({_short(theirs)} vs {_short(ours)})")
    images = _pick(other, split)
    if len(images) == 0:
        raise UserError(f"the {split} split of {choice.separate} is empty")
    splits = Splits(run_splits.spec, images, images, images)  # the run's normalisation: the network's
    outputs = compute_outputs(run.load_net(device), images, splits, device)
    return outputs, None, {"source": "separate", "dataset": choice.dataset, "data_dir": str(choice.separate),
                           "split": split, "samples": int(outputs.labels.size)}


def is_run_data(run: Run, choice: CalibrationData, data_dir: str | Path | None = None) -> bool:
    """Whether ``choice`` names the data set the run was trained and tested on (now in ``data_dir`` if given)."""
    data = run.config["data"]
    if choice.separate is None or choice.dataset != data.get("name"):
        return False
    if data.get("name") == "digits":
        return True
    run_dir = data_dir or data.get("data_dir")
    return run_dir is not None and Path(run_dir).expanduser().resolve() == Path(choice.separate).expanduser().resolve()


def _image_options(run: Run, choice: CalibrationData) -> dict[str, Any]:
    """How an image folder given as calibration data is read: with the run's image size and channels."""
    if choice.dataset != "imagefolder":
        return {}
    data = run.data_options
    return {"image_size": data.get("image_size"), "channels": data.get("channels")}


def _pick(splits: Splits, split: str) -> ImageData:
    """One split of ``splits``, or 'all' of them as one."""
    if split != "all":
        return getattr(splits, split)
    parts = (splits.train, splits.holdout, splits.test)
    return ImageData(torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts]))


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."
