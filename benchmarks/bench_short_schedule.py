"""Short runs: the paper's schedule squeezed into a few epochs against the short schedule.

    python benchmarks/bench_short_schedule.py [--threads 1] [--seeds 0,1] [--cifar [--cifar-limit N] [--cifar-epochs 10]
                                              [--cifar-batches 16,128]]

- fashion: the built-in ResNet-56 as a plain CNN on the first 6,000 Fashion-MNIST training images (28x28 grey,
  10 classes, all trained on: ``--holdout-fraction 0``), tested on the first 2,000 test images, 4 epochs with
  ``--schedule paper`` and with ``--schedule short``, once per seed. The images come from Debian's
  ``dataset-fashion-mnist`` package (``apt-get install dataset-fashion-mnist``), written once as PNG image folders
  under ``.cache/fashion-mnist-6k``.
- fashion IC-only: internal classifiers added to the first seed's short-schedule CNN and trained alone, 4 epochs
  with each schedule (every exit's test accuracy).
- cifar10 (``--cifar``): the built-in ResNet-56 on the CIFAR-10 JPEG copy (``.cache/data/cifar10-jpeg``, 45,000
  training images after the 10 % holdout), 10 epochs with the short schedule and the batch it chooses, first
  seed; ``--cifar-batches`` adds a run on each of these batch sizes, named with ``--batch-size``;
  ``--cifar-limit N`` trains on the first N training images only (the test split is always the full 10,000).

Every run is ``shallowdeep train`` then ``shallowdeep evaluate`` in a subprocess, under ``.cache/bench-short/``; a
run already finished there is reused and an interrupted one resumed. Prints the figures and writes
benchmarks/results/short_schedule.json with the command that produced them.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from shallowdeep.io import atomic_write_json

REPO = Path(__file__).resolve().parents[1]
RESULT = REPO / "benchmarks" / "results" / "short_schedule.json"
FASHION_SOURCE = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot")
CIFAR = REPO / ".cache" / "data" / "cifar10-jpeg"


def read_idx(path: Path) -> np.ndarray:
    """The array of an IDX file (gzip), as MNIST and Fashion-MNIST ship them."""
    data = gzip.decompress(path.read_bytes())
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)


def fashion_folders(root: Path, train: int = 6000, test: int = 2000) -> Path:
    """The first ``train`` training and ``test`` test images of Fashion-MNIST as PNG folders under ``root``."""
    if (root / "done").is_file():
        return root
    if not FASHION_SOURCE.is_dir():
        sys.exit(f"{FASHION_SOURCE} is missing: apt-get install -y dataset-fashion-mnist")
    for split, prefix, n in (("train", "train", train), ("test", "t10k", test)):
        images = read_idx(FASHION_SOURCE / f"{prefix}-images-idx3-ubyte.gz")[:n]
        labels = read_idx(FASHION_SOURCE / f"{prefix}-labels-idx1-ubyte.gz")[:n]
        for i, (image, label) in enumerate(zip(images, labels)):
            folder = root / split / FASHION_CLASSES[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image, mode="L").save(folder / f"{i:05d}.png")
    (root / "done").write_text(f"first {train} train and {test} test images of {FASHION_SOURCE}\n")
    return root


def shallowdeep(*args: str) -> None:
    """Run one shallowdeep command, its output passed through; stop on failure."""
    command = [sys.executable, "-m", "shallowdeep", *args]
    print("$ shallowdeep " + " ".join(args), flush=True)
    if subprocess.run(command).returncode:
        sys.exit(f"failed: {' '.join(command)}")


def run_case(name: str, run_dir: Path, train_args: list[str], threads: int) -> dict[str, Any]:
    """Train (or resume, or reuse) and evaluate one run; its recipe, times and accuracies."""
    threads_args = ["--threads", str(threads)]
    if not (run_dir / "checkpoint.pt").is_file():
        shallowdeep("train", *train_args, "--out", str(run_dir), *threads_args)
    epochs_done = len((run_dir / "metrics.jsonl").read_text().splitlines())
    config = json.loads((run_dir / "config.json").read_text())
    if epochs_done < config["train"]["recipe"]["epochs"]:
        shallowdeep("train", "--out", str(run_dir), "--resume", *threads_args)
    if not (run_dir / "eval-test.json").is_file():
        shallowdeep("evaluate", str(run_dir), *threads_args)
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evaluation = json.loads((run_dir / "eval-test.json").read_text())
    record = config["data_record"]["splits"]
    return {"case": name, "seed": config["train"]["seed"], "run": os.path.relpath(run_dir, REPO),
            "train_command": "shallowdeep train " + " ".join(train_args),
            "train_images": record["train"]["images"], "holdout_images": record["holdout"]["images"],
            "test_images": evaluation["images"], "recipe": config["train"]["recipe"],
            "epoch_seconds": [m["seconds"] for m in metrics],
            "training_minutes": round(sum(m["seconds"] for m in metrics) / 60, 1),
            "holdout_accuracy_per_epoch": [m["holdout_acc"][-1] for m in metrics if "holdout_acc" in m],
            "test_accuracy": evaluation["top1"], "test_accuracy_per_exit": [e["top1"] for e in evaluation["exits"]]}


def int_list(text: str) -> list[int]:
    """"0,1,2" as [0, 1, 2]."""
    return [int(s) for s in text.split(",")]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--epochs", type=int, default=4, help="fashion: epochs of both schedules")
    p.add_argument("--seeds", type=int_list, default=[0, 1], help="fashion: a run of each schedule per seed")
    p.add_argument("--cifar", action="store_true", help="also ResNet-56 on the CIFAR-10 JPEG copy, short schedule")
    p.add_argument("--cifar-epochs", type=int, default=10)
    p.add_argument("--cifar-limit", type=int, help="train on the first N CIFAR-10 training images only")
    p.add_argument("--cifar-batches", type=int_list, default=[], help="cifar10: also a run on each of these batches")
    p.add_argument("--runs", type=Path, default=REPO / ".cache" / "bench-short", help="where the runs go")
    args = p.parse_args(argv)
    started = time.perf_counter()
    fashion = fashion_folders(REPO / ".cache" / "fashion-mnist-6k")
    rows = []
    for seed in args.seeds:
        for schedule in ("paper", "short"):
            train_args = ["--arch", "resnet56", "--dataset", "imagefolder", "--data-dir",
                          str(fashion.relative_to(REPO)), "--holdout-fraction", "0", "--epochs", str(args.epochs),
                          "--schedule", schedule, "--seed", str(seed)]
            rows.append(run_case(f"fashion-{schedule}", args.runs / f"fashion-{schedule}-{args.epochs}-seed{seed}",
                                 train_args, args.threads))
    cnn = REPO / next(r["run"] for r in rows if r["case"] == "fashion-short" and r["seed"] == args.seeds[0])
    for schedule in ("paper", "short"):
        train_args = ["--mode", "ic-only", "--from", os.path.relpath(cnn, REPO), "--dataset", "imagefolder",
                      "--data-dir", str(fashion.relative_to(REPO)), "--holdout-fraction", "0", "--epochs",
                      str(args.epochs), "--schedule", schedule, "--seed", str(args.seeds[0])]
        rows.append(run_case(f"fashion-ic-only-{schedule}", args.runs / f"fashion-ic-only-{schedule}-{args.epochs}",
                             train_args, args.threads))
    if args.cifar:
        if not CIFAR.is_dir():
            sys.exit(f"{CIFAR} is missing: mkdir -p .cache/data && tar -xzf ../shared/data/cifar10-jpeg.tar.gz "
                     "-C .cache/data")
        limit = ["--limit", str(args.cifar_limit)] if args.cifar_limit else []
        train_args = ["--arch", "resnet56", "--dataset", "imagefolder", "--data-dir", str(CIFAR.relative_to(REPO)),
                      "--epochs", str(args.cifar_epochs), "--schedule", "short", "--seed", str(args.seeds[0]), *limit]
        name = f"cifar10-short-{args.cifar_epochs}" + (f"-limit{args.cifar_limit}" if args.cifar_limit else "")
        rows.append(run_case("cifar10-short", args.runs / name, train_args, args.threads))
        for batch in args.cifar_batches:
            rows.append(run_case(f"cifar10-short-batch{batch}", args.runs / f"{name}-batch{batch}",
                                 [*train_args, "--batch-size", str(batch)], args.threads))
    for r in rows:
        holdout = " ".join(f"{100 * a:.1f}" for a in r["holdout_accuracy_per_epoch"]) or "-"
        print(f"{r['case']} (seed {r['seed']}): {r['recipe']['epochs']} epochs on {r['train_images']} images, "
              f"batch {r['recipe']['batch_size']}, in "
              f"{r['training_minutes']} min; holdout % per epoch {holdout}; test accuracy "
              f"{100 * r['test_accuracy']:.2f} % ({r['test_images']} images)")
        if len(r["test_accuracy_per_exit"]) > 1:
            print("  every exit's test accuracy %: " + " ".join(f"{100 * a:.2f}" for a in r["test_accuracy_per_exit"]))
    means = {case: round(sum(r["test_accuracy"] for r in rows if r["case"] == case) / len(args.seeds), 4)
             for case in ("fashion-paper", "fashion-short")}
    print(f"fashion, {args.epochs} epochs, mean test accuracy over seeds {args.seeds}: paper schedule "
          f"{100 * means['fashion-paper']:.2f} %, short schedule {100 * means['fashion-short']:.2f} %")
    command = "python benchmarks/bench_short_schedule.py " + " ".join(argv if argv is not None else sys.argv[1:])
    atomic_write_json(RESULT, {"benchmark": "short_schedule", "command": command.strip(),
                               "threads": args.threads, "fashion_mean_test_accuracy": means, "runs": rows,
                               "wall_minutes": round((time.perf_counter() - started) / 60, 1)})
    print(f"wrote {RESULT}")


if __name__ == "__main__":
    main()
