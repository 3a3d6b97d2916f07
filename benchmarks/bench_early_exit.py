"""Early exit in wall-clock time: the batched engine against the plain backbone, in one run.

    python benchmarks/bench_early_exit.py RUN [--data-dir DIR] [--device cuda] [--limit 2000]

Uses the policy and threshold of RUN/early-exit.json (run ``shallowdeep early-exit RUN`` first) on the
run's test split. The backbone is the SDN's segments without any IC (the original network's
computation). Measures throughput at each batch size (each batch timed --repeats times by both methods
back to back, its fastest time counting), the realised speedup (backbone time / engine time) against
the speedup the FLOPs predict (backbone FLOPs / the engine's average FLOPs), and batch-1 latency
(median, p95) on the first images and on images that run to the final head, against the backbone on
those same images. Targets: realised >= 0.8 x predicted at batch 128, >= 0.6 x at 16; at batch 1,
images that reach the final head no more than 10% slower than the backbone (median over those images
of the engine's latency over the backbone's on the same image). Writes benchmarks/results/early_exit.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from shallowdeep.data import batches
from shallowdeep.errors import UserError
from shallowdeep.exits import early_exit, make_policy, run_backbone
from shallowdeep.io import atomic_write_json
from shallowdeep.outputs import load_run_data
from shallowdeep.run import open_run

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "early_exit.json"
TARGETS = {"16": 0.6, "128": 0.8}  # realised / predicted speedup
FINAL_EXIT_SLOWDOWN = 1.10  # batch 1, images reaching the final head: engine / backbone latency


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", type=Path)
    p.add_argument("--data-dir", type=Path, help="where the run's data set is, if not where its config says")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-sizes", default="1,16,128,512")
    p.add_argument("--limit", type=int, help="use the first N test images")
    p.add_argument("--latency-images", type=int, default=300,
                   help="images timed one at a time: this many first images, and this many reaching the final head")
    p.add_argument("--repeats", type=int, default=3, help="times each batch is timed; the fastest counts")
    p.add_argument("--threads", type=int, help="torch intra-op threads (CPU)")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    run = open_run(args.run)
    chosen_path = run.path / "early-exit.json"
    if not chosen_path.is_file():
        raise UserError(f"{chosen_path} is missing; run `shallowdeep early-exit {args.run}` first")
    chosen = json.loads(chosen_path.read_text())
    policy = make_policy(chosen["policy"], chosen["threshold"])
    splits = load_run_data(run, **({"data_dir": str(args.data_dir)} if args.data_dir else {}))
    test = splits.test if args.limit is None else splits.test.subset(slice(0, args.limit))
    x = torch.cat([b for b, _ in batches(test, splits.spec, 512, train=False, shuffle=False, device=device)])
    net = run.load_net(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    _, exits, flops = early_exit(net, x, policy=policy)
    predicted = net.backbone_flops / flops.double().mean().item()
    engine = lambda batch: early_exit(net, batch, policy=policy)  # noqa: E731
    backbone = lambda batch: run_backbone(net, batch)  # noqa: E731

    throughput = {}
    for size in [int(s) for s in args.batch_sizes.split(",")]:
        chunks = list(x.split(size))
        times = best_pass_times({"backbone": backbone, "engine": engine}, chunks, args.repeats, sync)
        realised = times["backbone"] / times["engine"]
        throughput[str(size)] = {
            "backbone_images_per_s": len(x) / times["backbone"], "engine_images_per_s": len(x) / times["engine"],
            "realised_speedup": realised, "predicted_speedup": predicted,
            "realised_over_predicted": realised / predicted,
        }

    latency = batch1_latency(net, engine, backbone, x, exits, args.latency_images, args.repeats, sync)
    result = {
        "benchmark": "early_exit",
        "settings": {
            "run": str(args.run), "model": run.config["model"], "data": run.config["data"],
            "mode": run.config.get("train", {}).get("mode"), "pretrained": run.config.get("pretrained"),
            "policy": policy.name, "threshold": policy.threshold,
            "calibrated_on": chosen.get("calibrated_on"), "images": len(x), "limit": args.limit,
            "batch_sizes": args.batch_sizes, "repeats": args.repeats, "latency_images": args.latency_images,
            "device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else
            platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "backbone": "SDN segments without ICs",
        },
        "flops": {"backbone": net.backbone_flops, "engine_average": flops.double().mean().item(),
                  "exit_shares": torch.bincount(exits.cpu(), minlength=net.num_exits).div(len(x)).tolist()},
        "throughput": throughput,
        "batch1_latency_ms": latency,
        "targets": {
            **{f"batch{size}_realised_over_predicted>={goal}": throughput[size]["realised_over_predicted"] >= goal
               for size, goal in TARGETS.items() if size in throughput},
            f"batch1_final_exit_slowdown<={FINAL_EXIT_SLOWDOWN}": None if latency["final_exit"]["slowdown"] is None
            else latency["final_exit"]["slowdown"] <= FINAL_EXIT_SLOWDOWN,
        },
    }
    report(result)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.output, result)
    print(f"wrote {args.output}")
    return result


def best_pass_times(methods: dict[str, Callable], chunks: list[torch.Tensor], repeats: int,
                    sync: Callable[[], None]) -> dict[str, float]:
    """Seconds per pass over ``chunks`` for each method: every chunk is timed ``repeats`` times by each
    method back to back, and its fastest time counts (robust to other work on the machine)."""
    best = {name: [float("inf")] * len(chunks) for name in methods}
    for fn in methods.values():
        fn(chunks[0])
    for _ in range(repeats):
        for i, chunk in enumerate(chunks):
            for name, fn in methods.items():
                best[name][i] = min(best[name][i], timed(fn, chunk, sync))
    return {name: sum(times) for name, times in best.items()}


def batch1_latency(net, engine: Callable, backbone: Callable, x: torch.Tensor, exits: torch.Tensor, count: int,
                   repeats: int, sync: Callable[[], None]) -> dict:
    """Batch-1 latency in milliseconds of both methods on the first ``count`` images and on up to ``count``
    images that run to the final head; each image is timed by both back to back ``repeats`` times, its
    fastest time counting."""
    final = torch.nonzero(exits == net.num_exits - 1).squeeze(1)[:count].tolist()
    groups = {"all": pair_times(engine, backbone, x[:count], repeats, sync),
              "final_exit": pair_times(engine, backbone, x[final], repeats, sync)}
    result = {name: {"images": len(t["engine"]), **{m: summary(v) for m, v in t.items()}} for name, t in groups.items()}
    # Paired per image, so that the machine's speed drifting during the run cancels out.
    ratios = [e / b for e, b in zip(groups["final_exit"]["engine"], groups["final_exit"]["backbone"])]
    result["final_exit"]["slowdown"] = statistics.median(ratios) if ratios else None
    return result


def pair_times(engine: Callable, backbone: Callable, x: torch.Tensor, repeats: int,
               sync: Callable[[], None]) -> dict[str, list[float]]:
    times = {"engine": [float("inf")] * len(x), "backbone": [float("inf")] * len(x)}
    for i in range(min(10, len(x))):
        engine(x[i:i + 1]), backbone(x[i:i + 1])
    for _ in range(repeats):
        for i in range(len(x)):
            for name, fn in (("backbone", backbone), ("engine", engine)):
                times[name][i] = min(times[name][i], 1e3 * timed(fn, x[i:i + 1], sync))
    return times


def timed(fn: Callable, x: torch.Tensor, sync: Callable[[], None]) -> float:
    sync()
    start = time.perf_counter()
    fn(x)
    sync()
    return time.perf_counter() - start


def summary(values: list[float]) -> dict:
    if not values:
        return {"median": None, "p95": None}
    ordered = sorted(values)
    return {"median": statistics.median(ordered), "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]}


def report(result: dict) -> None:
    s = result["settings"]
    print(f"{s['policy']} threshold {s['threshold']:.6g} on {s['images']} test images, {s['device']} "
          f"({s['device_name']}, {s['threads']} threads)")
    print(f"{'batch':>6} {'backbone img/s':>15} {'engine img/s':>13} {'realised':>9} {'predicted':>10} {'ratio':>6}")
    for size, t in result["throughput"].items():
        print(f"{size:>6} {t['backbone_images_per_s']:15.1f} {t['engine_images_per_s']:13.1f} "
              f"{t['realised_speedup']:9.3f} {t['predicted_speedup']:10.3f} {t['realised_over_predicted']:6.3f}")
    lat = result["batch1_latency_ms"]
    for group, label in (("all", "first images"), ("final_exit", "images reaching the final head")):
        e, b = lat[group]["engine"], lat[group]["backbone"]
        if e["median"] is not None:
            print(f"batch-1 latency, {lat[group]['images']} {label}: engine median {e['median']:.3f} ms "
                  f"(p95 {e['p95']:.3f}), backbone median {b['median']:.3f} ms (p95 {b['p95']:.3f})")
    slowdown = lat["final_exit"]["slowdown"]
    print(f"images reaching the final head, median of engine/backbone latency per image: "
          f"{'-' if slowdown is None else f'{slowdown:.3f}'}")
    verdict = {True: "met", False: "MISSED", None: "not measured (no image reaches the final head)"}
    print("targets: " + ", ".join(f"{k} {verdict[v]}" for k, v in result["targets"].items()))


if __name__ == "__main__":
    try:
        main()
    except UserError as exc:
        print(f"bench_early_exit: error: {exc}", file=sys.stderr)
        sys.exit(2)
