"""Measure network overthinking (SDN paper, section 4) on a run's stored per-exit outputs.

Wasteful effect: the share of samples that some internal classifier before the final head already
classifies correctly, and where each sample is first classified correctly. The oracle lets every
sample leave at its earliest correct exit (samples no exit gets right pay the whole SDN's cost).
Destructive effect: the share of the final head's mistakes that an earlier IC got right, and per
IC how many such samples there are and its mean confidence on them. Writes RUN/overthinking.json.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..choices import SPLITS
from ._common import (add_device_argument, add_run_data_arguments, percentages, require_ics,
                      resolve_device, run_data, table)

NAME = "overthinking"
ORDER = 40
HELP = "wasteful and destructive overthinking of a run's exits"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, help="run folder")
    p.add_argument("--split", choices=SPLITS, default="test", help="data split to measure ('train' is un-augmented)")
    add_run_data_arguments(p)
    add_device_argument(p)


def run(args: argparse.Namespace) -> int:
    from ..run import open_run
    from ..run_analyses import overthinking
    from ..run_results import write_overthinking

    run_ = open_run(args.run)
    require_ics(run_, "overthinking")
    result = {"run": str(args.run),
              **overthinking(run_, args.split, resolve_device(args.device, args.threads), run_data(run_, args))}

    dist, destructive = result["wasteful"]["earliest_correct_exit"], result["destructive"]
    rows, shares = [], percentages([*dist["shares"], dist["none_share"]], 2)
    for i, name in enumerate(result["exit_names"]):
        per_ic = destructive["per_ic"][i] if i < len(destructive["per_ic"]) else None
        rows.append((i, name, f"{100 * result['exit_accuracy'][i]:.2f}", shares[i],
                     per_ic["count"] if per_ic else "-",
                     f"{per_ic['mean_confidence']:.3f}" if per_ic and per_ic["mean_confidence"] is not None else "-"))
    rows.append(("-", "none", "-", shares[-1], "-", "-"))
    headers = ["exit", "name", "accuracy %", "earliest correct %", "rescues final's mistakes", "mean confidence"]
    print(table(headers, rows))
    share = destructive["share_of_mistakes"]
    print(f"wasteful: {100 * result['wasteful']['share']:.2f}% of {result['samples']} {args.split} samples are already "
          f"right before the final head")
    print(f"oracle: {100 * result['oracle']['accuracy']:.2f}% accuracy at {result['oracle']['relative_cost']:.3f} of "
          f"the backbone's FLOPs")
    print(f"destructive: {destructive['count']} of the final head's {destructive['final_mistakes']} mistakes "
          f"({'-' if share is None else f'{100 * share:.2f}%'}) were right at an earlier IC")
    path = write_overthinking(run_.path, result)  # after printing: a full disk loses no figure
    print(f"wrote {path}")
    return 0
