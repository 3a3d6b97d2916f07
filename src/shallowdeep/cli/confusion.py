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

from ..choices import CONFUSION_BINS, CONFUSION_TRAIN_SAMPLES
from ._common import add_device_argument, add_run_data_arguments, int_range, require_ics, resolve_device, run_data, table

NAME = "confusion"
ORDER = 50
HELP = "confusion score of a run's exits as an error indicator (AUROC)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, help="run folder")
    p.add_argument("--split", choices=("test", "holdout"), default="test", help="data split to score")
    p.add_argument("--bins", type=int_range(1, 1000), default=CONFUSION_BINS, help="histogram bins")
    p.add_argument("--train-samples", type=int_range(0), default=CONFUSION_TRAIN_SAMPLES, metavar="N",
                   help="training images (a seeded random sample, un-augmented) whose scores' mean and standard "
                        "deviation normalise the score; 0: the whole training split")
    add_run_data_arguments(p)
    add_device_argument(p)


def run(args: argparse.Namespace) -> int:
    from ..run import open_run
    from ..run_analyses import confusion
    from ..run_results import write_confusion

    run_ = open_run(args.run)
    require_ics(run_, "confusion")
    report = {"run": str(args.run), **confusion(run_, args.split, resolve_device(args.device, args.threads),
                                                run_data(run_, args), args.train_samples, args.bins)}
    sampled, total = report["normalisation"]["train_samples"], report["normalisation"]["train_split_images"]

    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.4f}"

    print(table(["error indicator", "AUROC"], [("confusion score", cell(report["auroc"]["confusion"])),
                                               ("1 - max softmax", cell(report["auroc"]["confidence"]))]))
    print(f"mean normalised confusion: correct {cell(report['mean_confusion']['correct'])}, "
          f"wrong {cell(report['mean_confusion']['wrong'])} ({report['final_mistakes']} mistakes in "
          f"{report['samples']} {args.split} samples)")
    print(f"normalised on {report['normalised_on']}" + ("; --train-samples 0 uses them all" if sampled < total else ""))
    path = write_confusion(run_.path, report)  # after printing: a full disk loses no figure
    print(f"wrote {path}")
    return 0

