"""Threshold calibration on the test-half protocol: one global threshold against certified and per-exit ones.

    python benchmarks/bench_calibration.py RUN [--splits 200] [--max-drop 0.01] [--confidence 0.9]
        [--reference-run OTHER_RUN ...] [--output FILE]

Reads the run's stored test outputs (RUN/outputs/test.npz, written by ``shallowdeep evaluate RUN``). For
each of --splits seeded random halvings (seeds 0, 1, ...) the threshold is chosen on one half and
measured on the other, by (a) one global maxprob threshold, (b) the same certified by Learn then Test
at --confidence, (c) one threshold per IC (coordinate descent); (d) per-exit with a confidence level is
not supported. Reports, per method, the mean and median cost (fraction of the backbone's FLOPs) and the
mean accuracy drop below the final head on the evaluation half, and the share of splits whose evaluation
drop exceeds --max-drop. Per-exit thresholds trade accuracy for cost, so they are also compared at equal
accuracy: on each evaluation half, against the cheapest global threshold at least as accurate there (the
global trade-off curve). With --reference-run (other runs tested on the same images, e.g. the original
network or the same network fine-tuned as a plain CNN) the drop is measured against the final head of the
most accurate of them (chosen on the whole test split), so that accuracy the backbone gained by
fine-tuning is not credited to the exits. Also records every exit's test accuracy and the best accuracy
within 25/50/75/100 % of the cost on both halves of the first split. Writes
benchmarks/results/calibration.json (or --output).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from shallowdeep.exits import (ExitOutputs, ExitPolicy, MaxProb, best_at_budgets, calibrate, candidate_keys, simulate,
                               split_halves, summarise, sweep)
from shallowdeep.io import atomic_write_json

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "calibration.json"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", type=Path)
    p.add_argument("--splits", type=int, default=200, help="random calibration/evaluation halvings")
    p.add_argument("--max-drop", type=float, default=0.01)
    p.add_argument("--confidence", type=float, default=0.9)
    p.add_argument("--reference-run", type=Path, action="append", default=[],
                   help="measure the drop against this run's final head instead (repeatable: the most accurate)")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    return p.parse_args(argv)


def read_test_outputs(run: Path) -> ExitOutputs:
    """RUN/outputs/test.npz as plain arrays."""
    with np.load(run / "outputs" / "test.npz", allow_pickle=False) as f:
        return ExitOutputs(f["logits"], f["labels"], f["exit_flops"], int(f["backbone_flops"]))


def reference_hits(test: ExitOutputs, runs: list[Path]) -> tuple[np.ndarray, dict]:
    """Per-sample hits of the most accurate final head among ``runs`` (the run's own when there are none)."""
    if not runs:
        return test.correct[-1], {"reference": "the run's own final head", "accuracy": float(test.correct[-1].mean())}
    candidates = []
    for run in runs:
        other = read_test_outputs(run)
        if not np.array_equal(other.labels, test.labels):
            raise SystemExit(f"{run} was not tested on the same images as the run")
        candidates.append((float(other.correct[-1].mean()), str(run), other.correct[-1]))
    accuracy, name, hits = max(candidates, key=lambda c: c[0])
    return hits, {"reference": f"final head of {name}", "accuracy": accuracy,
                  "candidates": {n: a for a, n, _ in candidates}}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    test = read_test_outputs(args.run)
    hits, reference = reference_hits(test, args.reference_run)
    methods: dict[str, Callable[[ExitOutputs, np.ndarray], ExitPolicy]] = {
        "global": lambda o, r: calibrate(o, max_drop=args.max_drop, reference=r),
        f"global, confidence {args.confidence}": lambda o, r: calibrate(o, max_drop=args.max_drop, reference=r,
                                                                         confidence=args.confidence),
        "per-exit": lambda o, r: calibrate(o, max_drop=args.max_drop, per_exit=True, reference=r),
    }
    cost = {name: [] for name in methods}
    drop = {name: [] for name in methods}
    seconds = {name: 0.0 for name in methods}
    frontier = []  # cost of the cheapest global threshold as accurate as the per-exit one, on the evaluation half
    for seed in range(args.splits):
        calibration_index, evaluation_index = split_halves(test.labels.size, seed)
        calibration, evaluation = test.subset(calibration_index), test.subset(evaluation_index)
        final = hits[evaluation_index].mean()
        for name, choose in methods.items():
            start = time.perf_counter()
            policy = choose(calibration, hits[calibration_index])
            seconds[name] += time.perf_counter() - start
            measured = summarise(evaluation, simulate(evaluation, policy))
            cost[name].append(measured.flops_fraction)
            drop[name].append(final - measured.accuracy)
        frontier.append(global_cost_at(evaluation, final - drop["per-exit"][-1]))
    figures = {name: {
        "mean_cost_fraction": float(np.mean(cost[name])), "median_cost_fraction": float(np.median(cost[name])),
        "mean_drop": float(np.mean(drop[name])), "share_drop_above_max": float(np.mean(np.array(drop[name]) >
                                                                                       args.max_drop + 1e-12)),
        "seconds_per_calibration": seconds[name] / args.splits,
    } for name in methods}
    gain = np.array(cost["global"]) - np.array(cost["per-exit"])
    at_equal_accuracy = np.array(frontier) - np.array(cost["per-exit"])
    result = {
        "benchmark": "calibration",
        "settings": {"run": str(args.run), "splits": args.splits, "split_seeds": f"0..{args.splits - 1}",
                     "max_drop": args.max_drop, "confidence": args.confidence, "samples": int(test.labels.size),
                     "calibration_samples": int(test.labels.size // 2), "policy": "maxprob",
                     "command": " ".join(["python", "benchmarks/bench_calibration.py",
                                          *(sys.argv[1:] if argv is None else argv)])},
        "reference": reference,
        "exit_accuracy": test.correct.mean(axis=1).tolist(),
        "exit_flops_fraction": (test.exit_flops / test.backbone_flops).tolist(),
        "best_at_budget_split_0": {name: best_at_budgets(half, MaxProb) for name, half in
                                   zip(("calibration", "evaluation"), (test.subset(i) for i in
                                                                      split_halves(test.labels.size, 0)))},
        "methods": figures,
        "per_exit_vs_global": {"mean_cost_saving": float(gain.mean()), "share_of_splits_cheaper": float(
            np.mean(gain > 0)), "share_of_splits_dearer": float(np.mean(gain < 0))},
        "per_exit_vs_global_at_equal_accuracy": {
            "mean_cost_saving": float(np.nanmean(at_equal_accuracy)),
            "median_cost_saving": float(np.nanmedian(at_equal_accuracy)),
            "share_of_splits_cheaper": float(np.mean(at_equal_accuracy > 1e-12)),
            "splits_more_accurate_than_any_global_threshold": int(np.isnan(at_equal_accuracy).sum())},
        "unsupported": {f"per-exit, confidence {args.confidence}":
                        "per-exit thresholds are supported for the maxprob policy without a confidence level"},
    }
    report(result)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.output, result)
    print(f"wrote {args.output}")
    return result


def global_cost_at(outputs: ExitOutputs, accuracy: float) -> float:
    """The lowest cost (fraction of the backbone) of a global maxprob threshold at least ``accuracy`` accurate
    (NaN when none is)."""
    right, average = sweep(outputs, MaxProb, candidate_keys(outputs, MaxProb))
    feasible = right >= accuracy - 1e-12
    return float(average[feasible].min() / outputs.backbone_flops) if feasible.any() else float("nan")


def report(result: dict) -> None:
    s = result["settings"]
    print("exit accuracy %: " + " ".join(f"{100 * a:.2f}" for a in result["exit_accuracy"]))
    print("exit cost:       " + " ".join(f"{f:.3f}" for f in result["exit_flops_fraction"]))
    for half, rows in result["best_at_budget_split_0"].items():
        print(f"best accuracy within 25/50/75/100 % of the cost ({half} half of split 0): " + "  ".join(
            "-" if r["accuracy"] is None else f"{100 * r['accuracy']:.2f}" for r in rows))
    ref = result["reference"]
    print(f"drop measured against: {ref['reference']} ({100 * ref['accuracy']:.2f} %)")
    print(f"{s['splits']} random halves of {s['samples']} test samples, max drop {s['max_drop']}:")
    print(f"{'method':>26}  {'mean cost':>9}  {'median cost':>11}  {'mean drop':>9}  {'drop > max':>10}")
    for name, f in result["methods"].items():
        print(f"{name:>26}  {f['mean_cost_fraction']:9.4f}  {f['median_cost_fraction']:11.4f}  "
              f"{100 * f['mean_drop']:8.2f}%  {100 * f['share_drop_above_max']:9.1f}%")
    for name, why in result["unsupported"].items():
        print(f"{name:>26}  unsupported: {why}")
    v = result["per_exit_vs_global"]
    print(f"per-exit vs global: mean cost saving {v['mean_cost_saving']:.4f} of the backbone, cheaper on "
          f"{100 * v['share_of_splits_cheaper']:.0f}% of splits, dearer on {100 * v['share_of_splits_dearer']:.0f}%")
    v = result["per_exit_vs_global_at_equal_accuracy"]
    print(f"at equal accuracy on the evaluation half (global trade-off curve): per-exit saves "
          f"{v['mean_cost_saving']:.4f} of the backbone on average (median {v['median_cost_saving']:.4f}), "
          f"cheaper on {100 * v['share_of_splits_cheaper']:.0f}% of splits")


if __name__ == "__main__":
    main()
