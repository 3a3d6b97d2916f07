"""Choose an early-exit threshold on held-out data and measure it on the test split.

The threshold of the policy (maxprob: the paper's maximum softmax probability q; entropy: the
softmax entropy over log(classes); patience: how many consecutive exits must agree) is chosen on
calibration data, never on the data it is reported on: by default the run's holdout split, or its
training split, or a separate labelled data set (--calibration-data), or one seeded random half of the
test split (--calibrate-on test-half; the figures are then on the other half). --max-drop picks the
cheapest threshold whose accuracy is at most that far below the final head's (--confidence: certified
for the expected drop on new data, by Learn then Test; --per-exit: one maxprob threshold per IC);
--budget picks the most accurate one whose average cost is at most that fraction of the backbone's
FLOPs. Every result is kept under its own key (criterion and value, policy, calibration data, e.g.
``max-drop=0.01 maxprob holdout``) in RUN/early-exit/<key>.json: the threshold, which data chose it,
accuracy and cost on calibration and test data next to the final head alone and the oracle, the share
of samples leaving at each exit, the best accuracy within 25/50/75/100 % of the backbone's cost, both
trade-off curves; and RUN/early-exit/<key>.png, the test curve with the chosen point and the oracle.
Running the same key again replaces only that result. RUN/early-exit.json and RUN/early-exit.png
repeat the latest result; a single-result early-exit.json of an earlier version is kept in
RUN/early-exit/ before it is replaced.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..choices import DATASETS, DEFAULT_MAX_DROP, POLICY_NAMES
from ..errors import UserError
from ._common import (add_device_argument, add_run_data_arguments, fraction, open_fraction, percentages,
                      positive_float, random_seed, require_ics, resolve_device, run_data, table)

NAME = "early-exit"
ORDER = 30
HELP = ("calibrate an early-exit threshold on held-out data, measure it on test; each criterion, policy and "
        "calibration data keeps its own result in RUN/early-exit/")

# the calibration settings (shallowdeep.calibration_data.CalibrationData) and their options
SETTINGS = {"source": "--calibrate-on", "split": "--calibration-split", "separate": "--calibration-data",
            "dataset": "--calibration-dataset", "split_seed": "--split-seed"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, help="run folder")
    p.add_argument("--policy", choices=POLICY_NAMES, default="maxprob", help="exit policy")
    goal = p.add_mutually_exclusive_group()
    goal.add_argument("--max-drop", type=fraction, help="largest accuracy drop below the final head, 0.01 = one point "
                      f"(the criterion when neither is given, with {DEFAULT_MAX_DROP})")
    goal.add_argument("--budget", type=positive_float,
                      help="largest average cost, as a fraction of the backbone's FLOPs")
    p.add_argument("--confidence", type=open_fraction, help="certify the drop: with this probability (e.g. 0.9) the "
                   "expected accuracy drop on new data is at most --max-drop (Learn then Test)")
    p.add_argument("--per-exit", action="store_true", help="one maxprob threshold per IC (coordinate descent)")
    g = p.add_argument_group("calibration data (never the data the figures are reported on)")
    g.add_argument("--calibrate-on", choices=("holdout", "test-half"), default="holdout",
                   help="holdout: the run's --calibration-split (default); test-half: a seeded random half of the "
                        "test split chooses the threshold and the figures are on the other half")
    g.add_argument("--split-seed", type=random_seed, default=0, help="seed of the test-half split")
    g.add_argument("--calibration-split", choices=("holdout", "train", "test", "all"),
                   help="split that chooses the threshold: holdout (default) or train of the run's data; with "
                        "--calibration-data also test, or all (the default there: every image of that data set)")
    g.add_argument("--calibration-data", type=Path, metavar="DIR", help="a separate labelled data set")
    g.add_argument("--calibration-dataset", choices=DATASETS, default="imagefolder",
                   help="format of --calibration-data")
    add_run_data_arguments(p)
    add_device_argument(p)


def run(args: argparse.Namespace) -> int:
    from ..calibration_data import CalibrationData
    from ..run import open_run
    from ..run_analyses import early_exit, tradeoff_png
    from ..run_results import latest_early_exit_path, write_early_exit

    run_ = open_run(args.run)
    require_ics(run_, "early-exit")
    if args.confidence is not None and args.budget is not None:
        raise UserError("--confidence certifies a maximum accuracy drop; it does not go with --budget")
    choice = CalibrationData(args.calibrate_on, args.calibration_split, args.calibration_data, args.calibration_dataset,
                             args.split_seed)
    result = {"run": str(args.run),
              **early_exit(run_, choice, resolve_device(args.device, args.threads), run_data(run_, args), args.policy,
                           args.max_drop, args.budget, args.confidence, args.per_exit, args.data_dir)}
    _print(result)
    path = write_early_exit(run_.path, result, tradeoff_png)  # after printing: a full disk loses no figure
    print(f"wrote {path} with its plot, and the same as the latest result: {latest_early_exit_path(run_.path)}")
    return 0


def _print(result: dict[str, Any]) -> None:
    rows = []
    for split in ("calibration", "test"):
        for name in ("early_exit", "final_head", "oracle"):
            s = result[split][name]
            rows.append((split if name == "early_exit" else "", name.replace("_", " "), f"{100 * s['accuracy']:.2f}",
                         f"{s['average_flops'] / 1e6:.2f}", f"{s['flops_fraction']:.3f}"))
    print(table(["data", "", "accuracy %", "avg MFLOPs", "of backbone"], rows))
    shares = "  ".join(f"{n}: {s}%"
                       for n, s in zip(result["exit_names"], percentages(result["test"]["early_exit"]["exit_shares"])))
    print(f"test samples leaving at each exit: {shares}")
    rows = []
    for split in ("calibration", "test"):
        for i, entry in enumerate(result[split]["best_at_budget"]):
            figures = (("-", "-", entry["reason"]) if entry["accuracy"] is None else
                       (f"{100 * entry['accuracy']:.2f}", f"{entry['flops_fraction']:.3f}",
                        f"{entry['threshold']:.6g}"))
            rows.append((split if i == 0 else "", f"{100 * entry['budget']:.0f} %", *figures))
    print(f"best accuracy within a share of the backbone's cost, over every {result['policy']} threshold:")
    print(table(["data", "budget", "accuracy %", "of backbone", "threshold"], rows))
    source = result["calibrated_on"]
    criterion = ", ".join(f"{k.replace('_', ' ')} {v:.4g}" if isinstance(v, float) else f"{k.replace('_', ' ')} {v}"
                          for k, v in result["criterion"].items())
    print(f"{result['policy']} threshold {_threshold(result['threshold'])} chosen for {criterion} on the "
          f"{source['split']} split of {source['dataset']} ({source['source']} data, {source['samples']} images)")
    if "note" in source:
        print(f"{source['note']} (seed {source['seed']}, {source['samples']} + {source['evaluation_samples']} images)")


def _threshold(value: float | list[float]) -> str:
    return ", ".join(f"{v:.6g}" for v in value) if isinstance(value, (list, tuple)) else f"{value:.6g}"
