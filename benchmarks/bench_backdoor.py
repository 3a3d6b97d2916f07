"""The backdoor study on CPU: a BadNets trigger fine-tuned into the third-party ResNet-56.

Fine-tunes the akamaster ResNet-56 weights (SGD lr 0.01) on the CIFAR-10 JPEG copy with 10 % of the
training images poisoned (white 5x5 square, bottom-right, relabelled airplane), trains the same recipe
on clean data as the un-poisoned twin, trains ICs on clean data (IC-only, cached features) and
evaluates on the whole official test set. Targets: attack success rate >= 90 % with clean accuracy
within 2 points of the twin; then reports, next to the paper's 12 % -> 84 %, the accuracy on triggered
inputs of the CNN and of early exit (threshold chosen on clean held-out data) and the confusion score's
AUROC as a trigger detector.

    OMP_NUM_THREADS=1 python benchmarks/bench_backdoor.py [--limit 10000] [--epochs 3] [--out DIR]

(one thread: on a busy 2-core machine two OpenMP threads wait on each other and train several times
slower). A study already in --out is continued (a finished one only re-evaluated from its stored
outputs; then "resumed" is true and the seconds are those of that call). Writes
benchmarks/results/backdoor.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from shallowdeep.cli import main as shallowdeep
from shallowdeep.io import atomic_write_json

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = REPO.parent / "shared" / "weights" / "akamaster-resnet-cifar10" / "resnet56-4bfd9763.th"
RESULT = REPO / "benchmarks" / "results" / "backdoor.json"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=REPO / ".cache" / "data" / "cifar10-jpeg")
    p.add_argument("--out", type=Path, default=REPO / ".cache" / "backdoor-study")
    p.add_argument("--limit", type=int, default=10000, help="training images")
    p.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    command = ["backdoor", "--out", str(args.out), "--device", args.device]
    resumed = (args.out / "study.json").is_file()
    if resumed:
        command.append("--resume")
    else:
        command += ["--dataset", "cifar10", "--data-dir", str(args.data_dir),
                    "--backbone", str(REPO / "examples" / "akamaster_resnet.py") + ":resnet56", "--from", str(WEIGHTS),
                    "--limit", str(args.limit), "--epochs", str(args.epochs), "--holdout-fraction", "0.05",
                    "--cache-views", "1"]
    start = time.perf_counter()
    if shallowdeep(command) != 0:
        raise SystemExit("the backdoor study failed")
    study = json.loads((args.out / "backdoor.json").read_text())
    keep = ("poison", "clean", "attack", "triggered", "early_exit", "clean_baseline", "targets", "paper", "seconds")
    result = {"command": "shallowdeep " + " ".join(command), "resumed": resumed,
              "wall_seconds": round(time.perf_counter() - start, 1),
              "test_images": study["test_images"], **{k: study[k] for k in keep},
              "detection": {k: v for k, v in study["detection"].items() if k != "histogram"},
              "settings": study["settings"]}
    atomic_write_json(RESULT, result)
    print(f"wrote {RESULT}")


if __name__ == "__main__":
    main()
