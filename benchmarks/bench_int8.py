"""int8 against fp32 exports of one run: accuracy, cost and drop on the same protocol, and seconds, in one run.

    python benchmarks/bench_int8.py FP32_EXPORT INT8_EXPORT IMAGES_DIR [--backbone FP32_BACKBONE_EXPORT]
                                    [--backbone-int8 INT8_BACKBONE_EXPORT] [--threads 2]

FP32_EXPORT: ``shallowdeep export RUN`` at the threshold of an early-exit result calibrated on a test half
(``--calibrate-on test-half``); INT8_EXPORT: ``shallowdeep export RUN --quantize int8`` (the same result's
threshold chosen again on the int8 outputs, on the same half); IMAGES_DIR: the run's test images, in path order
as the run's image-folder data reads them (class folders sorted by name). On the other half (the evaluation
half): accuracy, average cost (a share of the backbone's FLOPs) and the drop against the fp32 final head, for
each export. Seconds: batch 1 over the whole test set (one image at a time, the fused graph) and batch 128
(streaming), for each export and the backbones given. Writes benchmarks/results/int8.json; run it on a quiet
machine (``nice -n -20``).
"""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from shallowdeep.exits.halves import split_halves
from shallowdeep.io import atomic_write_json, strict_json
from shallowdeep.runtime import Runtime, load

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO / "benchmarks" / "results" / "int8.json"


def evaluation(runtime: Runtime, images: np.ndarray, labels: np.ndarray) -> dict:
    """Early exit's accuracy and cost share on ``images``, every exit's accuracy and the share leaving at each."""
    answer = runtime.predict(images, batch_size=128)
    logits = [np.concatenate(p) for p in zip(*(runtime.exit_logits(images[i:i + 500])
                                                for i in range(0, len(images), 500)))]
    return {"threshold": runtime.policy.threshold, "accuracy": float((answer.indices == labels).mean()),
            "cost_share": float(np.mean(answer.flops) / runtime.manifest.backbone_flops),
            "exit_accuracy": [float((l.argmax(1) == labels).mean()) for l in logits],
            "exit_shares": (np.bincount(answer.exits, minlength=len(logits)) / len(labels)).tolist()}


def seconds(runtime: Runtime, images: np.ndarray, repeats: int) -> dict:
    """ms per image at batch 1 (the whole set, one image at a time) and images/s at batch 128 (fastest of
    ``repeats``)."""
    x = runtime.preprocess(images)
    runtime.fused(x[:1])
    runtime.predict(images[:256], batch_size=128)
    best1 = best128 = float("inf")
    for _ in range(repeats):
        time.sleep(0.05)  # the previous call's threads stop spinning
        start = time.perf_counter()
        for i in range(len(x)):
            runtime.fused(x[i:i + 1])
        best1 = min(best1, time.perf_counter() - start)
        time.sleep(0.05)
        start = time.perf_counter()
        runtime.predict(images, batch_size=128)
        best128 = min(best128, time.perf_counter() - start)
    return {"batch1_ms_per_image": best1 / len(x) * 1e3, "batch128_images_per_second": len(x) / best128}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fp32", type=Path)
    parser.add_argument("int8", type=Path)
    parser.add_argument("images", type=Path)
    parser.add_argument("--backbone", type=Path, help="fp32 export of the backbone alone (export --no-exits)")
    parser.add_argument("--backbone-int8", type=Path, help="int8 export of the backbone alone")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args()

    fp32, int8 = load(args.fp32, threads=args.threads), load(args.int8, threads=args.threads)
    files, images = fp32.read_images([args.images])
    classes = sorted({f.parent.name for f in files})
    labels = np.array([classes.index(f.parent.name) for f in files])
    calibrated_on = fp32.policy.source.get("calibrated_on") or {}
    if calibrated_on.get("source") != "test-half" or int8.manifest.quantisation is None:
        sys.exit("give an fp32 export calibrated on a test half, and its int8 export")
    _, half = split_halves(len(files), int(calibrated_on.get("seed", 0)))
    quality = {name: evaluation(runtime, images[half], labels[half]) for name, runtime in (("fp32", fp32),
                                                                                           ("int8", int8))}
    final_fp32 = quality["fp32"]["exit_accuracy"][-1]
    for name, q in quality.items():
        q["drop_against_fp32_final_head"] = final_fp32 - q["accuracy"]
        print(f"{name}: threshold {q['threshold']:.4f}, accuracy {q['accuracy']:.4f}, cost {q['cost_share']:.3f}, "
              f"drop {q['drop_against_fp32_final_head']:+.4f}", flush=True)

    timed = {"fp32": seconds(fp32, images, args.repeats), "int8": seconds(int8, images, args.repeats)}
    for name, folder in (("backbone_fp32", args.backbone), ("backbone_int8", args.backbone_int8)):
        if folder is not None:
            timed[name] = seconds(load(folder, threads=args.threads), images, args.repeats)
    for name, t in timed.items():
        print(f"{name:14s} batch 1: {t['batch1_ms_per_image']:.3f} ms/image, batch 128: "
              f"{t['batch128_images_per_second']:.0f} images/s", flush=True)
    measures = {
        "int8_speedup_batch1": timed["fp32"]["batch1_ms_per_image"] / timed["int8"]["batch1_ms_per_image"],
        "int8_speedup_batch128": timed["int8"]["batch128_images_per_second"]
        / timed["fp32"]["batch128_images_per_second"],
        "int8_accuracy_minus_fp32": quality["int8"]["accuracy"] - quality["fp32"]["accuracy"],
        "int8_cost_minus_fp32": quality["int8"]["cost_share"] - quality["fp32"]["cost_share"]}
    kept = (measures["int8_speedup_batch1"] > 1 and measures["int8_speedup_batch128"] > 1
            and quality["int8"]["drop_against_fp32_final_head"] <= quality["fp32"]["drop_against_fp32_final_head"]
            + 0.005)
    result = {"benchmark": "int8",
              "settings": {"fp32": str(args.fp32), "int8": str(args.int8), "images": len(files),
                           "evaluation_samples": len(half), "threads": args.threads, "repeats": args.repeats,
                           "command": "python " + " ".join(map(shlex.quote, sys.argv)),
                           "python": platform.python_version(), "machine": platform.machine()},
              "fp32_final_head_accuracy": final_fp32, "quality": quality, "seconds": timed, "measures": measures,
              "int8_pays": {"rule": "faster at batch 1 and 128, and a drop within half a point of fp32's",
                            "met": kept}}
    print(strict_json({"measures": measures, "int8_pays": kept}, indent=2))
    atomic_write_json(args.output, result)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
