"""Write one self-contained HTML page about a run: per-exit accuracy and cost, the early-exit
trade-off (every result the early-exit command kept in RUN/early-exit/), overthinking with example
images, the confusion histograms and AUROCs, Grad-CAM of samples the first IC gets right and the final
head wrong (examples and Grad-CAM samples drawn with --seed, balanced over classes), and the backdoor study when RUN/backdoor.json exists. Writes RUN/report/index.html (images
embedded, opens without a network) with its PNGs and report.json beside it."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import add_device_argument, add_run_data_arguments, int_range, random_seed, resolve_device

NAME = "report"
ORDER = 60
HELP = "one self-contained HTML report of a run"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, help="run folder")
    p.add_argument("--gradcam", type=int_range(0, 100), default=6, metavar="N",
                   help="disagreements shown with Grad-CAM (0: none)")
    p.add_argument("--examples", type=int_range(0, 100), default=8, metavar="N",
                   help="example images per earliest correct exit")
    p.add_argument("--seed", type=random_seed, default=0, help="draws the example and Grad-CAM images")
    add_run_data_arguments(p)
    add_device_argument(p)


def run(args: argparse.Namespace) -> int:
    from ..report import write_report

    page = write_report(args.run, resolve_device(args.device, args.threads), gradcam_samples=args.gradcam,
                        examples_per_exit=args.examples, seed=args.seed, data_dir=args.data_dir,
                        cache_dir=args.cache_dir)
    print(f"wrote {page}")
    return 0
