"""Evaluate a run: top-1 and top-5 accuracy of every exit and its cumulative cost in FLOPs
(absolute and as a share of the unmodified backbone). Writes RUN/eval-<split>.json."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import add_device_argument, add_run_data_arguments, resolve_device, run_data, table

NAME = "evaluate"
ORDER = 20
HELP = "per-exit accuracy and cost of a run"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, help="run folder")
    p.add_argument("--split", choices=("test", "holdout"), default="test")
    add_run_data_arguments(p)
    add_device_argument(p)


def run(args: argparse.Namespace) -> int:
    from ..run import open_run
    from ..run_analyses import evaluation
    from ..run_results import write_evaluation

    run_ = open_run(args.run)
    result = {"run": str(args.run),
              **evaluation(run_, args.split, resolve_device(args.device, args.threads), run_data(run_, args))}
    rows = result["exits"]
    print(table(["exit", "name", "top-1 %", "top-5 %", "MFLOPs", "of backbone"],
                [(r["exit"], r["name"], f"{100 * r['top1']:.2f}", f"{100 * r['top5']:.2f}",
                  f"{r['flops'] / 1e6:.2f}", f"{100 * r['flops_fraction']:.1f}%") for r in rows]))
    path = write_evaluation(run_.path, args.split, result)  # after printing: a full disk loses no figure
    print(f"{result['images']} {args.split} images; wrote {path}")
    return 0
