"""Run the whole SDN story on the embedded data set (scikit-learn's 8x8 handwritten digits,
upscaled to 16x16), offline, in a few minutes on a laptop CPU: a ResNet-56 trained as a CNN,
turned into an SDN by IC-only training, an SDN trained jointly, and every exit evaluated."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..demo import run_demo
from ..errors import UserError
from ._common import add_device_argument, progress_bar, resolve_device, table

NAME = "demo"
ORDER = 5
HELP = "the whole story on embedded data, offline, in minutes"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("shallowdeep-demo"), help="folder for the demo's runs and results")
    add_device_argument(p)


def run(args: argparse.Namespace) -> int:
    if args.out.exists() and any(args.out.iterdir()):
        raise UserError(f"{args.out} is not empty; remove it or choose another --out")
    results = run_demo(args.out, resolve_device(args.device), progress_bar, log=lambda s: print(s, flush=True))
    for mode, r in results["runs"].items():
        print(f"\n{mode}: test accuracy and cost of every exit")
        print(table(["exit", "name", "top-1 %", "of backbone FLOPs"],
                    [(e["exit"], e["name"], f"{100 * e['top1']:.1f}", f"{100 * e['flops_fraction']:.1f}%")
                     for e in r["test"]]))
    print(f"\nwrote {args.out / 'demo.json'}")
    return 0
