"""The confusion score (SDN paper, section 5.2) as an indicator of the final head's mistakes.

Confusion = sum over internal classifiers of the L1 distance between the IC's softmax and the
final head's, z-normalised with its mean and standard deviation on the un-augmented training
split: on a seeded random sample of it (--train-samples, 5,000 images; 0: the whole split), which gives the
mean and standard deviation at a fraction of the cost and leaves the AUROC as it is (the normalisation keeps
the scores' order). Reports its AUROC for separating the final head's mistakes from its correct answers next
to that of the plain confidence (1 - max softmax of the final head), the mean confusion of correct
and wrong samples, and their histograms. Writes RUN/confusion.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import (add_device_argument, add_run_data_arguments, int_range, require_ics, require_samples,
                      resolve_device, run_data, table)

NAME = "confusion"
ORDER = 50
HELP = "confusion score of a run's exits as an error indicator (AUROC)"
TRAIN_SAMPLES = 5000
SAMPLE_SEED = 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, help="run folder")
    p.add_argument("--split", choices=("test", "holdout"), default="test", help="data split to score")
    p.add_argument("--bins", type=int_range(1, 1000), default=30, help="histogram bins")
    p.add_argument("--train-samples", type=int_range(0), default=TRAIN_SAMPLES, metavar="N",
                   help="training images (a seeded random sample, un-augmented) whose scores' mean and standard "
                        "deviation normalise the score; 0: the whole training split")
    add_run_data_arguments(p)
    add_device_argument(p)


def run(args: argparse.Namespace) -> int:
    from ..analysis import confusion_report
    from ..outputs import load_outputs, load_train_sample
    from ..run import open_run
    from ..run_results import write_confusion

    run_ = open_run(args.run)
    require_ics(run_, "confusion")
    device = resolve_device(args.device, args.threads)
    splits = run_data(run_, args)
    outputs = load_outputs(run_, args.split, device, splits)
    require_samples(outputs, args.split, "score another --split")
    train = load_train_sample(run_, args.train_samples, SAMPLE_SEED, device, splits)
    report = confusion_report(train, outputs, args.bins)
    sampled, total = report["normalisation"]["train_samples"], len(splits.train)
    report["normalisation"].update(train_split_images=total, sample_seed=SAMPLE_SEED if sampled < total else None)
    normalised_on = (f"a seeded random sample of {sampled} of the {total} training images (un-augmented)"
                     if sampled < total else f"the {total} training images (un-augmented)")
    result = {"run": str(args.run), "split": args.split, "normalised_on": normalised_on, **report}

    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.4f}"

    print(table(["error indicator", "AUROC"], [("confusion score", cell(report["auroc"]["confusion"])),
                                               ("1 - max softmax", cell(report["auroc"]["confidence"]))]))
    print(f"mean normalised confusion: correct {cell(report['mean_confusion']['correct'])}, "
          f"wrong {cell(report['mean_confusion']['wrong'])} ({report['final_mistakes']} mistakes in "
          f"{report['samples']} {args.split} samples)")
    print(f"normalised on {normalised_on}" + ("; --train-samples 0 uses them all" if sampled < total else ""))
    path = write_confusion(run_.path, result)  # after printing: a full disk loses no figure
    print(f"wrote {path}")
    return 0

