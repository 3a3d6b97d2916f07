"""Training input pipeline throughput next to ResNet-56 training throughput, measured in one run.

Pipeline: the decoded uint8 cache -> random crop + flip -> normalise -> batches of 128 on the device, one
epoch of CIFAR-10's training split (the JPEG copy at .cache/data/cifar10-jpeg, or --data-dir; synthetic
uint8 data of the same shape when absent). Training: forward + backward + SGD step of ResNet-56 at the same
batch size. The two are measured in alternation, --rounds times, and their medians compared. The claim:
the pipeline is at least 20 times faster than training, so it never starves the accelerator.

    python benchmarks/bench_data_pipeline.py [--device cuda] [--data-dir PATH] [--train-steps 20]

Prints the figures and writes benchmarks/results/data_pipeline.json with the settings used.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from shallowdeep.data import DatasetSpec, ImageData, batches, load_dataset
from shallowdeep.data.cifar import CIFAR10_CLASSES
from shallowdeep.io import atomic_write_json
from shallowdeep.models import create

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO / ".cache" / "data" / "cifar10-jpeg"
RESULT = REPO / "benchmarks" / "results" / "data_pipeline.json"
TARGET_RATIO = 20.0
SYNTHETIC_SPEC = DatasetSpec("cifar10", 10, 32, list(CIFAR10_CLASSES), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225),
                             pad=4, jitter=False)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_source(data_dir: Path) -> tuple[ImageData, DatasetSpec, dict]:
    """The training split and spec, with the times to decode the source and to read the decoded cache."""
    if not data_dir.is_dir():
        generator = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (50_000, 3, 32, 32), dtype=torch.uint8, generator=generator)
        data = ImageData(images, torch.randint(0, 10, (50_000,), generator=generator))
        note = f"{data_dir} absent: synthetic uint8 data of CIFAR-10's shape"
        return data, SYNTHETIC_SPEC, {"source": "synthetic", "note": note}
    with tempfile.TemporaryDirectory() as cache_dir:  # a fresh cache: the first load decodes every JPEG
        start = time.perf_counter()
        load_dataset("cifar10", data_dir, holdout_fraction=0.0, cache_dir=cache_dir)
        decode_s = time.perf_counter() - start
        start = time.perf_counter()
        splits = load_dataset("cifar10", data_dir, holdout_fraction=0.0, cache_dir=cache_dir)
        cached_s = time.perf_counter() - start
    n = len(splits.train) + len(splits.test)
    info = {"source": str(data_dir), "images": n, "decode_s": round(decode_s, 3), "cached_load_s": round(cached_s, 3),
            "decode_images_per_s": round(n / decode_s), "cached_load_images_per_s": round(n / cached_s)}
    return splits.train, splits.spec, info


def pipeline_throughput(data: ImageData, spec: DatasetSpec, batch_size: int, device: torch.device) -> float:
    """Images per second of one training epoch of :func:`batches` (data already on the device)."""
    data = data.to(device)
    generator = torch.Generator(device=device).manual_seed(0)
    for _ in batches(data.subset(slice(0, 4 * batch_size)), spec, batch_size, train=True, shuffle=True,
                     device=device, generator=generator):
        pass  # warm-up
    sync(device)
    start = time.perf_counter()
    count = 0
    for x, _ in batches(data, spec, batch_size, train=True, shuffle=True, device=device, generator=generator):
        count += x.shape[0]
    sync(device)
    return count / (time.perf_counter() - start)


def training_throughput(batch_size: int, steps: int, device: torch.device) -> float:
    """Images per second of ResNet-56 forward + backward + SGD step on random batches."""
    model = create("resnet56", num_classes=10, input_size=32).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(batch_size, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch_size,), device=device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    for _ in range(2):
        step()  # warm-up
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return steps * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help="CIFAR-10 as ROOT/{train,test}/<class>/")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--train-steps", type=int, default=None, help="timed ResNet-56 steps (default 5 CPU, 30 GPU)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved measurements of each; medians are reported")
    args = parser.parse_args()
    device = torch.device(args.device)
    steps = args.train_steps or (30 if device.type == "cuda" else 5)

    data, spec, info = load_source(args.data_dir)
    pipeline_runs, training_runs = [], []
    for _ in range(args.rounds):  # interleaved, so both see the same machine load
        pipeline_runs.append(pipeline_throughput(data, spec, args.batch_size, device))
        training_runs.append(training_throughput(args.batch_size, steps, device))
    pipeline, training = statistics.median(pipeline_runs), statistics.median(training_runs)
    ratio = pipeline / training
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)"
    result = {
        "benchmark": "data_pipeline",
        "settings": {"device": device_name, "batch_size": args.batch_size, "train_steps": steps, "rounds": args.rounds,
                     "train_images": len(data), "augmentation": "crop pad 4 + flip, normalise", "model": "resnet56",
                     "torch": torch.__version__, "torch_threads": torch.get_num_threads()},
        **info,
        "pipeline_images_per_s": round(pipeline),
        "resnet56_train_images_per_s": round(training, 1),
        "pipeline_images_per_s_runs": [round(r) for r in pipeline_runs],
        "resnet56_train_images_per_s_runs": [round(r, 1) for r in training_runs],
        "ratio": round(ratio, 1),
        "target_ratio": TARGET_RATIO,
        "meets_target": ratio >= TARGET_RATIO,
    }
    if "cached_load_images_per_s" in info:
        print(f"decode ({info['images']:,} JPEGs, thread pool): {info['decode_images_per_s']:,} images/s; "
              f"cache load: {info['cached_load_images_per_s']:,} images/s")
    else:
        print(info["note"])
    print(f"device: {device_name}")
    print(f"input pipeline (augment + normalise + batch {args.batch_size}): {pipeline:,.0f} images/s "
          f"(median of {args.rounds})")
    print(f"ResNet-56 training (forward + backward + SGD, batch {args.batch_size}): {training:,.1f} images/s "
          f"(median of {args.rounds})")
    print(f"ratio: {ratio:,.1f} (target >= {TARGET_RATIO:g}) {'OK' if ratio >= TARGET_RATIO else 'BELOW TARGET'}")
    atomic_write_json(RESULT, result)
    print(f"wrote {RESULT.relative_to(REPO)}")


if __name__ == "__main__":
    main()
