"""Start-up time of the command line next to that of importing torch, measured in one run.

Times three fresh processes, in alternation, --rounds times (after one unmeasured warm-up each):
``python -c "import torch"``, ``shallowdeep --help`` and ``shallowdeep train --help``, and compares
their median wall times. The claim: the parser is built without the library, so ``shallowdeep --help``
takes at most 1.3 times as long as importing torch (less, since it does not import torch at all).

    python benchmarks/bench_cli_startup.py [--rounds 15]

Prints the figures and writes benchmarks/results/cli_startup.json with the settings used.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

from shallowdeep.io import atomic_write_json

REPO = Path(__file__).resolve().parents[1]
RESULT = REPO / "benchmarks" / "results" / "cli_startup.json"
TARGET_RATIO = 1.3


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=15, help="measurements of each command, in alternation")
    p.add_argument("--output", type=Path, default=RESULT)
    return p.parse_args(argv)


def commands() -> dict[str, list[str]]:
    """The timed command lines by name: the ``shallowdeep`` script installed beside this interpreter (not a
    shell shim on PATH, which would add its own start-up), else ``python -m shallowdeep``."""
    script = Path(sys.executable).with_name("shallowdeep")
    cli = [str(script)] if script.is_file() else [sys.executable, "-m", "shallowdeep"]
    return {"import torch": [sys.executable, "-c", "import torch"],
            "shallowdeep --help": [*cli, "--help"],
            "shallowdeep train --help": [*cli, "train", "--help"]}


def wall_time(argv: list[str]) -> float:
    """Seconds one run of ``argv`` takes, from start to exit; it must succeed."""
    start = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    cmds = commands()
    for line in cmds.values():  # warm-up: file caches, compiled bytecode
        wall_time(line)
    runs: dict[str, list[float]] = {name: [] for name in cmds}
    for _ in range(args.rounds):  # interleaved, so every command sees the same machine load
        for name, line in cmds.items():
            runs[name].append(wall_time(line))
    medians = {name: statistics.median(times) for name, times in runs.items()}
    torch_s = medians["import torch"]
    ratios = {name: medians[name] / torch_s for name in cmds if name != "import torch"}
    result = {
        "benchmark": "cli_startup",
        "settings": {"rounds": args.rounds, "python": platform.python_version(), "torch": version("torch"),
                     "machine": f"{platform.machine()} ({os.cpu_count()} cores)",
                     "commands": {name: shlex.join(line) for name, line in cmds.items()}},
        "median_s": {name: round(s, 4) for name, s in medians.items()},
        "runs_s": {name: [round(s, 4) for s in times] for name, times in runs.items()},
        "ratio_to_import_torch": {name: round(r, 3) for name, r in ratios.items()},
        "target_ratio": TARGET_RATIO,
        "meets_target": ratios["shallowdeep --help"] <= TARGET_RATIO,
    }
    for name, s in medians.items():
        ratio = f"  ({ratios[name]:.2f} x import torch)" if name in ratios else ""
        print(f"{name:>26}: {1000 * s:7.0f} ms median of {args.rounds}{ratio}")
    ok = result["meets_target"]
    print(f"shallowdeep --help / import torch: {ratios['shallowdeep --help']:.2f} (target <= {TARGET_RATIO:g}) "
          f"{'OK' if ok else 'ABOVE TARGET'}")
    atomic_write_json(args.output, result)
    print(f"wrote {args.output}")
    return result


if __name__ == "__main__":
    main()
