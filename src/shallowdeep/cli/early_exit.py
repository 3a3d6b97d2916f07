"""Choose an early-exit threshold on held-out data and measure it on the test split.

The threshold of the policy (maxprob: the paper's maximum softmax probability q; entropy: the
softmax entropy over log(classes); patience: how many consecutive exits must agree) is chosen on
calibration data, never on the test set: by default the run's holdout split, or its training split,
or a separate labelled data set (--calibration-data). --max-drop picks the cheapest threshold whose
accuracy is at most that far below the final head's; --budget picks the most accurate one whose
average cost is at most that fraction of the backbone's FLOPs. Writes RUN/early-exit.json (the
threshold, which data chose it, accuracy and cost on calibration and test data next to the final head
alone and the oracle, the share of samples leaving at each exit, both trade-off curves) and
RUN/early-exit.png (the test curve with the chosen point and the oracle).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from ..data import DATASETS, ImageData, Splits, load_dataset
from ..errors import UserError
from ..exits import DEFAULT_MAX_DROP, POLICIES, calibrate, early_exit_result
from ..io import atomic_write_bytes, atomic_write_json
from ..exit_outputs import ExitOutputs
from ..outputs import compute_outputs, load_outputs, load_run_data
from ..run import Run, open_run
from ._common import add_device_argument, resolve_device, table

NAME = "early-exit"
ORDER = 30
HELP = "calibrate an early-exit threshold on held-out data, measure it on test"

RESULT_JSON = "early-exit.json"
RESULT_PNG = "early-exit.png"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, help="run folder")
    p.add_argument("--policy", choices=tuple(POLICIES), default="maxprob", help="exit policy")
    goal = p.add_mutually_exclusive_group()
    goal.add_argument("--max-drop", type=float, help="largest accuracy drop below the final head, 0.01 = one point "
                      f"(the criterion when neither is given, with {DEFAULT_MAX_DROP})")
    goal.add_argument("--budget", type=float, help="largest average cost, as a fraction of the backbone's FLOPs")
    g = p.add_argument_group("calibration data (never the run's test split)")
    g.add_argument("--calibration-split", choices=("holdout", "train", "test", "all"),
                   help="split that chooses the threshold: holdout (default) or train of the run's data; with "
                        "--calibration-data also test, or all (the default there: every image of that data set)")
    g.add_argument("--calibration-data", type=Path, metavar="DIR", help="a separate labelled data set")
    g.add_argument("--calibration-dataset", choices=DATASETS, default="imagefolder",
                   help="format of --calibration-data")
    p.add_argument("--data-dir", type=Path, help="where the run's data set is now, if it moved")
    add_device_argument(p)


def run(args: argparse.Namespace) -> int:
    run_ = open_run(args.run)
    device = resolve_device(args.device)
    overrides = {"data_dir": str(args.data_dir)} if args.data_dir else {}
    run_splits = load_run_data(run_, **overrides) if overrides or args.calibration_data else None
    calibration, calibrated_on = _calibration_outputs(run_, args, run_splits, device)
    policy = calibrate(calibration, args.policy, max_drop=args.max_drop, budget=args.budget)
    test = load_outputs(run_, "test", device, splits=run_splits)
    criterion = {"budget": args.budget} if args.budget is not None else {
        "max_drop": DEFAULT_MAX_DROP if args.max_drop is None else args.max_drop}
    exit_names = run_.config["model"].get("exits") or [f"IC {i + 1}" for i in range(len(test.exit_flops) - 1)]
    result = {"run": str(args.run),
              **early_exit_result(policy, criterion, calibrated_on, calibration, test, exit_names)}
    atomic_write_json(run_.path / RESULT_JSON, result)
    atomic_write_bytes(run_.path / RESULT_PNG, _plot(result))
    _print(result)
    print(f"wrote {run_.path / RESULT_JSON} and {run_.path / RESULT_PNG}")
    return 0


def _calibration_outputs(run_: Run, args: argparse.Namespace, run_splits: Splits | None,
                         device: torch.device) -> tuple[ExitOutputs, dict[str, Any]]:
    """The per-exit outputs that choose the threshold, and a record of where they came from."""
    data = run_.config["data"]
    if args.calibration_data is None or _is_run_data(run_, args):
        split = args.calibration_split or "holdout"
        if split in ("test", "all"):
            raise UserError(f"--calibration-split {split} would calibrate on the run's test set; use holdout or "
                            "train, or a separate data set with --calibration-data")
        outputs = load_outputs(run_, split, device, splits=run_splits)
        if outputs.labels.size == 0:
            raise UserError(f"the run's {split} split is empty (holdout_fraction 0?); use --calibration-split "
                            "train or --calibration-data DIR")
        return outputs, {"source": "run", "dataset": data.get("name"),
                         "data_dir": str(args.data_dir) if args.data_dir else data.get("data_dir"),
                         "split": split, "samples": int(outputs.labels.size)}
    split = args.calibration_split or "all"
    other = load_dataset(args.calibration_dataset, args.calibration_data)
    for what, theirs, ours in (("classes", other.spec.classes, run_splits.spec.classes),
                               ("image size", other.spec.input_size, run_splits.spec.input_size)):
        if theirs != ours:
            raise UserError(f"calibration data {args.calibration_data} does not match the run's {what} "
                            f"({_short(theirs)} vs {_short(ours)})")
    images = _pick(other, split)
    if len(images) == 0:
        raise UserError(f"the {split} split of {args.calibration_data} is empty")
    # The run's normalisation, since the network was trained with it.
    splits = Splits(run_splits.spec, images, images, images)
    outputs = compute_outputs(run_.load_net(device), images, splits, device)
    return outputs, {"source": "separate", "dataset": args.calibration_dataset,
                     "data_dir": str(args.calibration_data), "split": split, "samples": int(outputs.labels.size)}


def _is_run_data(run_: Run, args: argparse.Namespace) -> bool:
    """Whether --calibration-data names the data set the run was trained and tested on."""
    data = run_.config["data"]
    if args.calibration_dataset != data.get("name"):
        return False
    if data.get("name") == "digits":
        return True
    run_dir = args.data_dir or data.get("data_dir")
    return run_dir is not None and Path(run_dir).expanduser().resolve() == args.calibration_data.expanduser().resolve()


def _pick(splits: Splits, split: str) -> ImageData:
    if split != "all":
        return getattr(splits, split)
    parts = (splits.train, splits.holdout, splits.test)
    return ImageData(torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts]))


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _plot(result: dict[str, Any]) -> bytes:
    from ..report.plots import tradeoff_plot  # matplotlib is loaded only when a figure is drawn

    test, curve = result["test"], result["curve"]["test"]
    point = lambda s: (s["flops_fraction"], s["accuracy"])  # noqa: E731
    label = f"{result['policy']} policy, threshold chosen on {result['calibrated_on']['split']} data"
    return tradeoff_plot(curve["flops_fraction"], curve["accuracy"], point(test["oracle"]), point(test["final_head"]),
                         point(test["early_exit"]), label)


def _print(result: dict[str, Any]) -> None:
    rows = []
    for split in ("calibration", "test"):
        for name in ("early_exit", "final_head", "oracle"):
            s = result[split][name]
            rows.append((split if name == "early_exit" else "", name.replace("_", " "), f"{100 * s['accuracy']:.2f}",
                         f"{s['average_flops'] / 1e6:.2f}", f"{s['flops_fraction']:.3f}"))
    print(table(["data", "", "accuracy %", "avg MFLOPs", "of backbone"], rows))
    shares = "  ".join(f"{n}: {100 * s:.1f}%"
                       for n, s in zip(result["exit_names"], result["test"]["early_exit"]["exit_shares"]))
    print(f"test samples leaving at each exit: {shares}")
    source = result["calibrated_on"]
    criterion = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in result["criterion"].items())
    print(f"{result['policy']} threshold {result['threshold']:.6g} chosen for {criterion} on the {source['split']} "
          f"split of {source['dataset']} ({source['source']} data, {source['samples']} images)")
