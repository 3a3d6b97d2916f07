"""How long ``shallowdeep.load(RUN)`` takes next to importing torch and reading the run's checkpoint, measured in
one run.

Makes a ResNet-56 SDN run (32x32 RGB images, 10 classes: an image folder of 20 random PNGs, 1 epoch; the weights
do not matter here), or takes ``--run``, and a copy of it without its stored analysis (as a run made before the
analysis was stored: loading it traces and analyses the backbone again). Then times three fresh processes, in
alternation, ``--rounds`` times (after one unmeasured warm-up each):

- ``import torch; torch.load(RUN/checkpoint.pt, weights_only=True)``: the floor;
- ``import shallowdeep; shallowdeep.load(RUN)``;
- ``import shallowdeep; shallowdeep.load(COPY)``: the run without its stored analysis.

The claim: loading takes at most 1.5 times the floor: the ratio of the median wall times, and the median of each
round's ratio (robust to the load of a shared machine drifting), both.

    python benchmarks/bench_load.py [--rounds 9] [--run RUN]

Prints the figures and writes benchmarks/results/load.json with the settings used (and the machine's load
average before and after: on a busy machine every process is slower, the floor included).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

import numpy as np

from bench_cli_startup import wall_time  # this folder is first on the path when a benchmark runs
from shallowdeep.io import atomic_write_json

REPO = Path(__file__).resolve().parents[1]
RESULT = REPO / "benchmarks" / "results" / "load.json"
TARGET_RATIO = 1.5


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=9, help="measurements of each command, in alternation")
    p.add_argument("--run", type=Path, help="a run folder to load (default: a ResNet-56 run made here)")
    p.add_argument("--output", type=Path, default=RESULT)
    return p.parse_args(argv)


def make_run(folder: Path) -> Path:
    """A ResNet-56 SDN run on an image folder of 32x32 random RGB images (2 per class and split), one epoch."""
    import torch
    from PIL import Image

    from shallowdeep.model_spec import ModelSpec
    from shallowdeep.train import Recipe, TrainConfig, new_run

    pixels = np.random.default_rng(0).integers(0, 256, (2, 10, 2, 32, 32, 3), dtype=np.uint8)
    for s, split in enumerate(("train", "test")):
        for c in range(10):
            (folder / "data" / split / f"c{c}").mkdir(parents=True)
            for i in range(2):
                Image.fromarray(pixels[s, c, i]).save(folder / "data" / split / f"c{c}" / f"{i}.png")
    run = folder / "r56"
    data = {"name": "imagefolder", "data_dir": str(folder / "data"), "holdout_fraction": 0.0}
    new_run(run, data, ModelSpec(arch="resnet56"), TrainConfig("sdn", Recipe("sgd", 0.01, 1, [], batch_size=20)),
            device=torch.device("cpu"))
    return run


def without_analysis(run: Path, copy: Path) -> Path:
    """A copy of ``run`` whose config holds no stored analysis, as a run of an earlier version."""
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("outputs", "*.png", "*.html"))
    config = json.loads((copy / "config.json").read_text())
    config["model"].pop("analysis", None)
    (copy / "config.json").write_text(json.dumps(config, indent=2))
    return copy


def commands(run: Path, old: Path) -> dict[str, list[str]]:
    """The timed command lines by name."""
    python = [sys.executable, "-c"]
    return {"import torch + read checkpoint": [*python, "import sys, torch; torch.load(sys.argv[1], "
                                               "map_location='cpu', weights_only=True)", str(run / "checkpoint.pt")],
            "shallowdeep.load(RUN)": [*python, "import sys, shallowdeep; shallowdeep.load(sys.argv[1])", str(run)],
            "shallowdeep.load(RUN), no stored analysis": [*python, "import sys, shallowdeep; "
                                                          "shallowdeep.load(sys.argv[1])", str(old)]}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run or make_run(Path(tmp))
        cmds = commands(run, without_analysis(run, Path(tmp) / "old"))
        for line in cmds.values():  # warm-up: file caches, compiled bytecode
            wall_time(line)
        runs: dict[str, list[float]] = {name: [] for name in cmds}
        for _ in range(args.rounds):
            for name, line in cmds.items():
                runs[name].append(round(wall_time(line), 4))
        config = json.loads((run / "config.json").read_text())
        size = (run / "checkpoint.pt").stat().st_size
    median = {name: round(statistics.median(times), 4) for name, times in runs.items()}
    floor = median["import torch + read checkpoint"]
    ratio = {name: round(m / floor, 3) for name, m in median.items()}
    floors = runs["import torch + read checkpoint"]  # the same round's floor: robust to the machine's load drifting
    paired = {name: round(statistics.median(t / f for t, f in zip(times, floors)), 3) for name, times in runs.items()}
    result = {
        "benchmark": "load",
        "settings": {"rounds": args.rounds, "python": platform.python_version(), "torch": version("torch"),
                     "machine": f"{platform.machine()} ({os.cpu_count()} cores)",
                     "load_average_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
                     "run": str(args.run) if args.run else "ResNet-56 SDN, 32x32 RGB, 10 classes (made here)",
                     "model": {k: config["model"].get(k) for k in ("arch", "input_shape", "exits")},
                     "checkpoint_bytes": size},
        "median_s": median,
        "ratio_to_floor": ratio,
        "median_ratio_to_the_rounds_floor": paired,
        "target_ratio": TARGET_RATIO,
        "meets_target": max(ratio["shallowdeep.load(RUN)"], paired["shallowdeep.load(RUN)"]) <= TARGET_RATIO,
        "runs_s": runs,
    }
    for name, m in median.items():
        print(f"{name:45s} {m:7.3f} s  ({ratio[name]:.2f}x the floor; {paired[name]:.2f}x its round's, median)")
    met = "met" if result["meets_target"] else "NOT met"
    print(f"target: shallowdeep.load(RUN) <= {TARGET_RATIO}x the floor: {met}")
    atomic_write_json(args.output, result)
    return result


if __name__ == "__main__":
    main()
