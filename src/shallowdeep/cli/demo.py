"""Run the whole SDN story on the embedded data set (scikit-learn's 8x8 handwritten digits,
upscaled to 16x16), offline, in a few minutes on a laptop CPU. It runs the same commands a user
would, in order: a ResNet-56 trained as a plain CNN; turned into an SDN by IC-only training; a
second SDN trained jointly; every exit evaluated; early exit calibrated on the holdout split;
overthinking and confusion measured; and the HTML report written."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UserError
from ._common import add_device_argument

NAME = "demo"
ORDER = 5
HELP = "the whole story on embedded data, offline, in minutes"

DATA = ["--dataset", "digits"]
CNN_RECIPE = ["--epochs", "12", "--lr", "0.05", "--milestones", "8,11", "--batch-size", "64"]
IC_RECIPE = ["--epochs", "10", "--milestones", "7", "--batch-size", "64"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("shallowdeep-demo"), help="folder for the demo's runs and results")
    add_device_argument(p)


def steps(out: Path, device: str, threads: int | None = None) -> list[tuple[str, list[str]]]:
    """The commands the demo runs, with a title each."""
    cnn, ic, sdn = str(out / "cnn"), str(out / "ic-only"), str(out / "sdn")
    dev = ["--device", device] + (["--threads", str(threads)] if threads else [])
    return [
        ("Train ResNet-56 as a plain CNN", ["train", "--arch", "resnet56", *DATA, *CNN_RECIPE, "--out", cnn, *dev]),
        ("Add internal classifiers and train only them (backbone frozen)",
         ["train", "--mode", "ic-only", "--from", cnn, *DATA, *IC_RECIPE, "--out", ic, *dev]),
        ("Train a second SDN jointly, IC loss weights growing over the epochs",
         ["train", "--mode", "sdn", "--arch", "resnet56", *DATA, *CNN_RECIPE, "--out", sdn, *dev]),
        ("Every exit of the plain CNN", ["evaluate", cnn, *dev]),
        ("Every exit of the IC-only SDN (its final head is the CNN's, unchanged)", ["evaluate", ic, *dev]),
        ("Every exit of the jointly trained SDN", ["evaluate", sdn, *dev]),
        ("Early exit on the IC-only SDN, threshold chosen on the holdout split", ["early-exit", ic, *dev]),
        ("Early exit on the jointly trained SDN", ["early-exit", sdn, *dev]),
        ("Overthinking of the IC-only SDN", ["overthinking", ic, *dev]),
        ("Confusion as an error indicator", ["confusion", ic, *dev]),
        ("The report", ["report", ic, *dev]),
    ]


def run(args: argparse.Namespace) -> int:
    from ..run_folder import REPORT_PAGE
    from ..run_results import report_dir
    from . import main  # the demo runs the real commands

    if args.out.exists() and any(args.out.iterdir()):
        raise UserError(f"{args.out} is not empty; remove it or choose another --out")
    for title, argv in steps(args.out, args.device, args.threads):
        print(f"\n== {title}\n$ shallowdeep {' '.join(argv)}", flush=True)
        code = main(argv)
        if code:
            return code
    print(f"\nThe report: {report_dir(args.out / 'ic-only') / REPORT_PAGE}")
    return 0
