"""IC-only training on cached features against streaming the frozen backbone every epoch.

The third-party ResNet-56 (akamaster weights, option-A shortcuts) on the CIFAR-10 JPEG copy gets ICs
trained twice with the same recipe (Adam 1e-3, 25 epochs, x0.1 at 15) and seed: streamed (every epoch
runs the backbone on freshly augmented images) and cached (the pooled IC inputs of --views augmented
passes, fp16, then 25 epochs on the cache). Reports wall-clock time of each, their ratio (target >= 10)
and every IC's test accuracy (target: within 0.5 point).

    python benchmarks/bench_ic_cache.py [--limit 2000] [--epochs 25] [--views 2] [--test-images 5000] [--output F]

Writes benchmarks/results/ic_cache.json (or --output).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from shallowdeep.build import build_sdn, extract_state_dict, load_checkpoint_file
from shallowdeep.data import load_dataset
from shallowdeep.evaluate import exit_table
from shallowdeep.io import atomic_write_json
from shallowdeep.model_spec import ModelSpec
from shallowdeep.outputs import compute_outputs
from shallowdeep.train import Recipe, TrainConfig
from shallowdeep.train.sources import CachedMaps, StreamedImages
from shallowdeep.train.trainer import train

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = REPO.parent / "shared" / "weights" / "akamaster-resnet-cifar10" / "resnet56-4bfd9763.th"
RESULT = REPO / "benchmarks" / "results" / "ic_cache.json"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=REPO / ".cache" / "data" / "cifar10-jpeg")
    p.add_argument("--weights", type=Path, default=WEIGHTS)
    p.add_argument("--limit", type=int, default=2000, help="training images (the full split has 45,000)")
    p.add_argument("--test-images", type=int, default=5000, help="test images the accuracies are measured on")
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--views", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--output", type=Path, default=RESULT)
    args = p.parse_args()
    device = torch.device(args.device)
    data = dict(name="cifar10", data_dir=args.data_dir, limit=args.limit)
    splits = load_dataset(**data)
    splits.holdout = splits.holdout.subset(slice(0, 0))  # time the training alone, no per-epoch evaluation
    test = splits.test.subset(slice(0, args.test_images))
    state = extract_state_dict(load_checkpoint_file(args.weights))
    spec = ModelSpec(factory="examples/akamaster_resnet.py:resnet56", num_classes=10, input_shape=(3, 32, 32),
                     base_dir=REPO)
    recipe = Recipe("adam", 1e-3, args.epochs, [round(15 * args.epochs / 25)], weight_decay=1e-4)
    results = {}
    for path in ("streamed", "cached"):
        torch.manual_seed(0)
        net = build_sdn(spec, backbone_state=state)
        cfg = TrainConfig("ic-only", recipe, seed=0, cache_views=args.views)
        with tempfile.TemporaryDirectory() as run_dir:
            start = time.perf_counter()
            if path == "streamed":
                train(Path(run_dir), net, StreamedImages(splits), cfg, device)
            else:
                train(Path(run_dir), net, CachedMaps(splits), cfg, device)
            seconds = time.perf_counter() - start
        rows = exit_table(compute_outputs(net, test, splits, device), net.exit_names)
        results[path] = {"seconds": round(seconds, 2), "test_top1": [round(r["top1"], 4) for r in rows]}
        print(f"{path:9s} {seconds:8.1f} s   test top-1 per exit: "
              + " ".join(f"{100 * r['top1']:.2f}" for r in rows), flush=True)
    speedup = results["streamed"]["seconds"] / results["cached"]["seconds"]
    gaps = [abs(a - b) for a, b in zip(results["streamed"]["test_top1"], results["cached"]["test_top1"])]
    print(f"speed-up of the cached path: {speedup:.1f}x (target >= 10); largest accuracy gap: "
          f"{100 * max(gaps):.2f} points (target <= 0.5)")
    atomic_write_json(args.output, {"settings": {**vars(args), "data_dir": str(args.data_dir),
                                                 "weights": str(args.weights), "output": str(args.output),
                                                 "recipe": recipe.to_dict(), "device": str(device),
                                                 "threads": torch.get_num_threads()},
                                    **results, "speedup": round(speedup, 2), "max_gap_points": round(100 * max(gaps), 2)})


if __name__ == "__main__":
    main()
