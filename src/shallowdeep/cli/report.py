"""Write one self-contained HTML page about a run: per-exit accuracy and cost, the early-exit
trade-off (from RUN/early-exit.json when present), overthinking with example images, the
confusion histograms and AUROCs, Grad-CAM of samples the first IC gets right and the final head
wrong, and the backdoor study when RUN/backdoor.json exists. Writes RUN/report/index.html (images
embedded, opens without a network) with its PNGs and report.json beside it."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import add_device_argument, int_range, resolve_device

NAME = "report"
ORDER = 60
HELP = "one self-contained HTML report of a run"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, help="run folder")
    p.add_argument("--gradcam", type=int_range(0, 100), default=6, metavar="N",
                   help="disagreements shown with Grad-CAM (0: none)")
    p.add_argument("--examples", type=int_range(0, 100), default=8, metavar="N",
                   help="example images per earliest correct exit")
    add_device_argument(p)


def run(args: argparse.Namespace) -> int:
    from ..report import write_report

    page = write_report(args.run, resolve_device(args.device, args.threads), gradcam_samples=args.gradcam,
                        examples_per_exit=args.examples)
    print(f"wrote {page}")
    return 0
