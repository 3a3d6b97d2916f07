"""Early exit in wall-clock time: the batched engine against the plain backbone, per IC design, in one run.

    python benchmarks/bench_early_exit.py [--designs paper,conv,ztw] [--threads 2] [--limit 2000]

The network is the third-party ResNet-56 (examples/akamaster_resnet.py, akamaster's CIFAR-10 weights) with
ICs of each design attached, on the CIFAR-10 JPEG test images. The heads are untrained: each exit's
threshold (max-probability, one per IC) is chosen on the images' own scores so that a set share of the
images leaves at each exit (--shares; by default those of a trained paper-IC ResNet-56 at its calibrated
threshold), which is what the timing depends on. The backbone is the SDN's segments without any IC.

Measures, in the memory format given (channels-last by default: faster on CPUs for both methods):
- throughput at each batch size, over the whole test set cut into batches of that size: the backbone, each
  design's per-batch engine (``early_exit`` on every batch) and its streaming engine (``early_exit_stream``:
  every stage waits for a full batch), each timed over a whole pass --repeats times in turn, its fastest pass
  counting; the realised speed-up (backbone time / engine time) against the one the FLOPs predict (backbone
  FLOPs / the engine's average FLOPs) and against the one the backbone's own stage times predict (the same
  average with each stage's measured seconds instead of its FLOPs: CPUs compute early, high-resolution stages
  more slowly per FLOP, so realised / time-predicted isolates the engine's own overhead);
- batch 1, images that run to the final head: each image timed by both methods back to back
  --latency-repeats times, its fastest time counting; the median over images of engine / backbone.
Targets (paper ICs): realised >= 0.9 x FLOPs-predicted at batch 128, >= 0.75 x at 16; a final-head image at
most 1.05 x the backbone at batch 1. Writes benchmarks/results/early_exit.json. On a shared machine run it
with a high priority (``nice -n -20``, as root), so that other work does not mix into the times.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from shallowdeep.build import build_sdn, extract_state_dict, load_checkpoint_file
from shallowdeep.data import batches, load_dataset
from shallowdeep.errors import UserError
from shallowdeep.exits import MaxProb, PerExitMaxProb, early_exit, early_exit_stream, run_backbone
from shallowdeep.heads import IC_DESIGNS, ICDesign
from shallowdeep.io import atomic_write_json
from shallowdeep.model_spec import ModelSpec
from shallowdeep.sdn import SDN

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO / "benchmarks" / "results" / "early_exit.json"
BACKBONE = "examples/akamaster_resnet.py:resnet56"
WEIGHTS = REPO.parent / "shared" / "weights" / "akamaster-resnet-cifar10" / "resnet56-4bfd9763.th"
DATA = REPO / ".cache" / "data" / "cifar10-jpeg"
# exit shares of the six ICs of the trained paper-IC ResNet-56 at its calibrated threshold; the rest reach the end
SHARES = "0.15,0.13,0.2,0.11,0.17,0.12"
TARGETS = {"128": 0.9, "16": 0.75}  # realised / predicted speed-up, paper ICs
FINAL_EXIT_SLOWDOWN = 1.05  # batch 1, paper ICs, images reaching the final head: engine / backbone latency

Method = Callable[[torch.Tensor], object]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--designs", default=",".join(IC_DESIGNS))
    p.add_argument("--weights", type=Path, default=WEIGHTS)
    p.add_argument("--data-dir", type=Path, default=DATA)
    p.add_argument("--shares", default=SHARES, help="share of the images leaving at each IC, comma-separated")
    p.add_argument("--batch-sizes", default="128,16")
    p.add_argument("--limit", type=int, help="use the first N test images")
    p.add_argument("--repeats", type=int, default=3, help="times each batch is timed; the fastest counts")
    p.add_argument("--latency-images", type=int, default=100, help="final-head images timed one at a time")
    p.add_argument("--latency-repeats", type=int, default=5, help="times each image is timed; the fastest counts")
    p.add_argument("--memory-format", choices=("channels_last", "contiguous"), default="channels_last")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--seed", type=int, default=0, help="initialises the untrained heads")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    memory_format = getattr(torch, args.memory_format if args.memory_format == "channels_last" else "contiguous_format")
    x = test_images(args.data_dir, args.limit).contiguous(memory_format=memory_format)
    shares = [float(s) for s in args.shares.split(",")]
    nets = {d: build_net(d, args.weights, args.seed).to(memory_format=memory_format) for d in args.designs.split(",")}
    policies = {d: policy_for_shares(net, x, shares) for d, net in nets.items()}
    backbone = next(iter(nets.values()))  # every design shares the same backbone segments
    methods: dict[str, Method] = {"backbone": lambda b: run_backbone(backbone, b)}
    methods.update({d: engine(net, policies[d]) for d, net in nets.items()})

    outcomes = {d: [torch.cat(t) for t in zip(*map(methods[d], x.split(500)))] for d in nets}
    throughput = {size: pass_times(nets, policies, backbone, list(x.split(size)), args.repeats)
                  for size in [int(s) for s in args.batch_sizes.split(",")]}
    stage_seconds = {size: backbone_stage_seconds(backbone, list(x.split(size))) for size in throughput}
    designs = {}
    for d, net in nets.items():
        _, exits, flops = outcomes[d]
        shares = torch.bincount(exits, minlength=net.num_exits).double().div(len(x))
        predicted = net.backbone_flops / flops.double().mean().item()
        designs[d] = {
            "thresholds": list(policies[d].threshold),
            "flops": {"backbone": net.backbone_flops, "engine_average": flops.double().mean().item(),
                      "exit_shares": shares.tolist()},
            "throughput": {str(size): {engine_name: speedups(times["backbone"], times[f"{d} {engine_name}"], predicted,
                                                             time_predicted(stage_seconds[size], shares), len(x))
                                       for engine_name in ENGINES}
                           for size, times in throughput.items()},
            "batch1_final_exit": final_exit_latency(net, methods[d], methods["backbone"], x, exits,
                                                    args.latency_images, args.latency_repeats),
        }
    result = {
        "benchmark": "early_exit",
        "command": "python " + shlex.join([os.path.relpath(__file__, REPO), *(sys.argv[1:] if argv is None else argv)]),
        "settings": {**{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                     "backbone": f"{BACKBONE} ({args.weights.name}); the SDN's segments without ICs",
                     "data": "cifar10 test split, imagenet normalization", "images": len(x),
                     "heads": "untrained; max-probability thresholds per IC chosen for --shares",
                     "device": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                     "threads": torch.get_num_threads(), "torch": torch.__version__,
                     "load_average_before": load_before, "load_average_after": os.getloadavg(),
                     "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())},
        "designs": designs,
        "targets": targets(designs.get("paper")),
    }
    report(result)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.output, result)
    print(f"wrote {args.output}")
    return result


def test_images(data_dir: Path, limit: int | None) -> torch.Tensor:
    """The CIFAR-10 test images, normalised as the akamaster weights expect."""
    splits = load_dataset("cifar10", data_dir, normalization="imagenet")
    test = splits.test if limit is None else splits.test.subset(slice(0, limit))
    return torch.cat([b for b, _ in batches(test, splits.spec, 1000, train=False, shuffle=False, device="cpu")])


def build_net(design: str, weights: Path, seed: int) -> SDN:
    """The third-party ResNet-56 with its pretrained weights and untrained ICs of ``design``, in eval mode."""
    torch.manual_seed(seed)
    spec = ModelSpec(factory=BACKBONE, num_classes=10, input_shape=(3, 32, 32), ic=ICDesign.parse(design),
                     base_dir=REPO)
    return build_sdn(spec, extract_state_dict(load_checkpoint_file(weights)), str(weights)).eval()


@torch.inference_mode()
def policy_for_shares(net: SDN, x: torch.Tensor, shares: list[float]) -> PerExitMaxProb:
    """Max-probability thresholds, one per IC, with which ``shares[i]`` of ``x`` leaves at IC ``i``."""
    if len(shares) != len(net.ics) or sum(shares) > 1:
        raise UserError(f"--shares needs {len(net.ics)} shares summing to at most 1, got {shares}")
    answers = [torch.cat(a) for a in zip(*(net.exit_logits(b) for b in x.split(500)))]
    scores = MaxProb.scores(torch.stack(answers[:-1]))
    running = torch.ones(len(x), dtype=torch.bool)
    thresholds = []
    for share, score in zip(shares, scores):
        leaving = round(share * len(x))
        candidates = score[running].sort(descending=True).values
        q = candidates[leaving - 1].item() if 0 < leaving <= len(candidates) else 2.0  # above 1: nobody leaves
        thresholds.append(q)
        running &= score < q
    return PerExitMaxProb(tuple(thresholds))


def engine(net: SDN, policy: PerExitMaxProb) -> Method:
    return lambda b: early_exit(net, b, policy=policy)


ENGINES = ("per-batch", "stream")


def pass_times(nets: dict[str, SDN], policies: dict[str, PerExitMaxProb], backbone: SDN, chunks: list[torch.Tensor],
               repeats: int) -> dict[str, float]:
    """Seconds of the fastest of ``repeats`` whole passes over ``chunks``: the backbone, and each design's
    per-batch and streaming engine, the methods taking turns in every repeat."""
    passes: dict[str, Callable[[], object]] = {"backbone": lambda: [run_backbone(backbone, c) for c in chunks]}
    for d, net in nets.items():
        passes[f"{d} per-batch"] = lambda net=net, policy=policies[d]: [early_exit(net, c, policy=policy)
                                                                        for c in chunks]
        passes[f"{d} stream"] = lambda net=net, policy=policies[d]: early_exit_stream(net, chunks, policy=policy)
    for fn in passes.values():
        fn()
    best = dict.fromkeys(passes, float("inf"))
    for _ in range(repeats):
        for name, fn in passes.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


@torch.inference_mode()
def backbone_stage_seconds(net: SDN, chunks: list[torch.Tensor]) -> list[float]:
    """Seconds each of the backbone's stages (the SDN's segments, no IC) takes over one pass of ``chunks``."""
    seconds = [0.0] * net.num_exits
    for h in chunks:
        for i, segment in enumerate(net.segments):
            start = time.perf_counter()
            h = segment(h)
            seconds[i] += time.perf_counter() - start
    return seconds


def time_predicted(stage_seconds: list[float], shares: torch.Tensor) -> float:
    """The speed-up the backbone's own stage times predict for samples leaving after each stage in ``shares``."""
    cumulative = torch.tensor(stage_seconds, dtype=torch.float64).cumsum(0)
    return float(cumulative[-1] / (shares * cumulative).sum())


def speedups(backbone: float, engine_time: float, predicted: float, predicted_by_time: float,
             images: int) -> dict[str, float]:
    realised = backbone / engine_time
    return {"backbone_images_per_s": images / backbone, "engine_images_per_s": images / engine_time,
            "realised_speedup": realised, "predicted_speedup": predicted,
            "realised_over_predicted": realised / predicted, "time_predicted_speedup": predicted_by_time,
            "realised_over_time_predicted": realised / predicted_by_time}


def final_exit_latency(net: SDN, engine_fn: Method, backbone: Method, x: torch.Tensor, exits: torch.Tensor,
                       count: int, repeats: int) -> dict:
    """Batch-1 latency (ms) of engine and backbone on up to ``count`` images that reach the final head, each
    timed by both back to back ``repeats`` times (fastest counts); slowdown: median of the per-image ratios."""
    images = x[torch.nonzero(exits == len(net.ics)).squeeze(1)[:count]].split(1)
    if not images:
        return {"images": 0, "engine_ms": None, "backbone_ms": None, "slowdown": None}
    for image in images[:10]:
        engine_fn(image), backbone(image)
    best = {"engine": [float("inf")] * len(images), "backbone": [float("inf")] * len(images)}
    for _ in range(repeats):
        for i, image in enumerate(images):
            for name, fn in (("backbone", backbone), ("engine", engine_fn)):
                best[name][i] = min(best[name][i], 1e3 * timed(fn, image))
    ratios = [e / b for e, b in zip(best["engine"], best["backbone"])]  # paired: drift cancels out
    return {"images": len(images), "engine_ms": statistics.median(best["engine"]),
            "backbone_ms": statistics.median(best["backbone"]), "slowdown": statistics.median(ratios)}


def timed(fn: Method, x: torch.Tensor) -> float:
    start = time.perf_counter()
    fn(x)
    return time.perf_counter() - start


def targets(paper: dict | None) -> dict[str, bool | None]:
    """Whether the paper ICs meet the targets (None where not measured)."""
    if paper is None:
        return {}
    met: dict[str, bool | None] = {f"batch{size}_{engine_name}_realised_over_predicted>={goal}":
                                   paper["throughput"][size][engine_name]["realised_over_predicted"] >= goal
                                   for size, goal in TARGETS.items() if size in paper["throughput"]
                                   for engine_name in ENGINES}
    slowdown = paper["batch1_final_exit"]["slowdown"]
    met[f"batch1_final_exit_slowdown<={FINAL_EXIT_SLOWDOWN}"] = (None if slowdown is None
                                                                 else slowdown <= FINAL_EXIT_SLOWDOWN)
    return met


def report(result: dict) -> None:
    s = result["settings"]
    print(f"{s['images']} test images, {s['memory_format']}, {s['device']} ({s['threads']} threads), "
          f"load average {s['load_average_before'][0]:.2f} before, {s['load_average_after'][0]:.2f} after")
    print(f"{'design':>7} {'engine':>9} {'batch':>6} {'backbone img/s':>15} {'engine img/s':>13} {'realised':>9} "
          f"{'predicted':>10} {'ratio':>6} {'by time':>8} {'ratio':>6}")
    for design, d in result["designs"].items():
        for size, by_engine in d["throughput"].items():
            for engine_name, t in by_engine.items():
                print(f"{design:>7} {engine_name:>9} {size:>6} {t['backbone_images_per_s']:15.1f} "
                      f"{t['engine_images_per_s']:13.1f} {t['realised_speedup']:9.3f} {t['predicted_speedup']:10.3f} "
                      f"{t['realised_over_predicted']:6.3f} {t['time_predicted_speedup']:8.3f} "
                      f"{t['realised_over_time_predicted']:6.3f}")
    for design, d in result["designs"].items():
        lat = d["batch1_final_exit"]
        if lat["images"]:
            print(f"{design:>7} batch 1, {lat['images']} images reaching the final head: "
                  f"engine {lat['engine_ms']:.3f} ms, backbone {lat['backbone_ms']:.3f} ms (medians); "
                  f"engine/backbone per image, median: {lat['slowdown']:.3f}")
    verdict = {True: "met", False: "MISSED", None: "not measured"}
    print("targets (paper ICs): " + ", ".join(f"{k} {verdict[v]}" for k, v in result["targets"].items()))


if __name__ == "__main__":
    try:
        main()
    except UserError as exc:
        print(f"bench_early_exit: error: {exc}", file=sys.stderr)
        sys.exit(2)
