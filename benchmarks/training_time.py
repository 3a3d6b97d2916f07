"""What training runs cost and reached: time per epoch, total training time and every exit's test accuracy.

    python benchmarks/training_time.py RUN [RUN ...] [--output FILE]

Reads each run's config.json, metrics.jsonl and eval-test.json (written by ``shallowdeep evaluate RUN``),
prints one block per run and writes benchmarks/results/training_time.json (or --output). Epoch seconds
are wall-clock times as the run recorded them, ZTW's ensemble fitting included.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from shallowdeep.io import atomic_write_json
from shallowdeep.run import open_run

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "training_time.json"


def summary(path: Path) -> dict[str, Any]:
    """One run's mode, recipe, IC design, time and test accuracy per exit."""
    run = open_run(path)
    metrics = run.read_metrics()
    seconds = [row["seconds"] + row.get("ensemble_seconds", 0.0) for row in metrics if "seconds" in row]
    timed = len(seconds) == len(metrics)  # runs from before epoch times were recorded have none
    evaluation = path / "eval-test.json"
    accuracy = [e["top1"] for e in json.loads(evaluation.read_text())["exits"]] if evaluation.is_file() else None
    train = run.config["train"]
    return {"run": str(path), "mode": train["mode"], "ic": run.config["model"].get("ic", {"design": "paper"}),
            "ic_loss": train.get("ic_loss", "growing") if train["mode"] == "sdn" else None, "recipe": train["recipe"],
            "pretrained": run.config.get("pretrained"), "epochs_done": len(metrics), "epoch_seconds": seconds,
            "training_minutes": round(sum(seconds) / 60, 1) if timed else None, "test_accuracy_per_exit": accuracy}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", type=Path, nargs="+")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = p.parse_args(argv)
    rows = [summary(path) for path in args.runs]
    for r in rows:
        accuracy = " ".join(f"{100 * a:.2f}" for a in r["test_accuracy_per_exit"] or [])
        loss = f", {r['ic_loss']} IC loss" if r["ic_loss"] else ""
        heads = "no ICs" if r["mode"] == "cnn" else f"{r['ic']['design']} ICs{loss}"
        print(f"{r['run']}: {r['mode']} ({heads}), {r['epochs_done']} epochs "
              f"in {r['training_minutes'] or '?'} min ({', '.join(f'{s:.0f}' for s in r['epoch_seconds'])} s)\n"
              f"  test accuracy per exit %: {accuracy or 'not evaluated'}")
    atomic_write_json(args.output, {"benchmark": "training_time", "command": "python benchmarks/training_time.py "
                                    + " ".join(map(str, args.runs)), "runs": rows})
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
