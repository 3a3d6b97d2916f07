"""Early exit in seconds where it deploys: the exported runtime (onnxruntime) against the backbones, in one run.

    python benchmarks/bench_deploy.py RUN EXPORT [--threads 2] [--torch-batch1-images 2000]

RUN is a trained run (the issue's setting: the third-party ResNet-56 with ``conv`` ICs trained IC-only on the
CIFAR-10 JPEG copy) and EXPORT its export (``shallowdeep export RUN --out EXPORT``) at the threshold of an
early-exit result chosen with ``--calibrate-on test-half --max-drop 0.01``. On the run's whole test split:

- batch 1, every image one at a time: onnxruntime early exit (the fused graph, one call per image), the
  onnxruntime backbone and the PyTorch eager backbone (contiguous and channels-last; on the first
  --torch-batch1-images images, as it is slow). The methods take turns on chunks of images, so that a
  change in the machine's speed falls on all of them alike;
- batch 1, by exit: up to --images-per-exit images leaving at each exit, one at a time, with early exit and then
  with the onnxruntime backbone (fastest of --repeats passes each); per exit, the time ratio beside the exit's
  FLOPs over the backbone's (the final head's is the "final head" measure), and the speed-up these times predict
  for the whole test split (weighted by the share leaving at each exit);
- batch 128: onnxruntime's streaming early exit, the onnxruntime backbone, the PyTorch backbone
  (channels-last) and PyTorch's streaming engine, each over the whole test split, fastest of --repeats passes;
- the realised speed-up (backbone seconds / early-exit seconds) against the one the FLOPs predict (backbone
  FLOPs / the average FLOPs of the exits taken), with the targets of the issue; at batch 128 also against the
  one the stages' own times predict (each stage timed alone on 128 images, weighted by the share of images
  reaching it): realised / that isolates the engine's overhead from what each stage costs per FLOP;
- the runtime's answers against PyTorch's streaming engine, sample by sample, and its accuracy, exit shares
  and cost on the evaluation half against the early-exit result's (computed by PyTorch on stored outputs).

The backbone is the SDN's segments without any IC (identical to the original network), exported the same way
(with the same layout rewrites; also timed as ``torch.onnx.export`` writes it, ``ort_backbone_plain``, to show
what the rewrites buy).
Every onnxruntime session shares the runtime's thread pool (``make_session``). Writes benchmarks/results/deploy.json. Run it on a quiet machine with a high priority (``nice -n -20``).
"""

from __future__ import annotations

import argparse
import copy
import platform
import shlex
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort
import torch

import shallowdeep
from shallowdeep.data.augment import normalize
from shallowdeep.export.blocked_layout import keep_blocked
from shallowdeep.exits import early_exit_stream, make_policy, run_backbone, split_halves
from shallowdeep.io import atomic_write_json, strict_json
from shallowdeep.outputs import load_run_data
from shallowdeep.run import open_run
from shallowdeep.runtime import load as load_export
from shallowdeep.runtime.engine import make_session

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO / "benchmarks" / "results" / "deploy.json"
TARGETS = {"batch1_share_of_predicted": 0.9, "final_head_slowdown": 1.05, "batch128_share_of_predicted": 0.9,
           "batch1_over_pytorch_eager": 6.0}


class Backbone(torch.nn.Module):
    """The SDN's segments in turn: the original network, no IC."""

    def __init__(self, net: shallowdeep.SDN) -> None:
        super().__init__()
        self.segments = net.segments

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for segment in self.segments:
            x = segment(x)
        return x


def onnx_backbone(net: shallowdeep.SDN, shape: tuple[int, ...], threads: int, folder: Path,
                  blocked: bool = True) -> ort.InferenceSession:
    """The backbone exported as the stages are (with the layout rewrites of ``shallowdeep.export.blocked_layout``,
    unless not ``blocked``: ``torch.onnx.export``'s graph as it comes), in a session on the runtime's thread
    pool."""
    path = folder / f"backbone-{'blocked' if blocked else 'plain'}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Backbone(net).eval(), (torch.randn(2, *shape),), str(path), input_names=["x"],
                          output_names=["logits"], dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
                          dynamo=True, verbose=False)
    if blocked:
        model = onnx.load(str(path))
        keep_blocked(model)
        onnx.save(model, str(path))
    return make_session(path, threads, "the backbone")


def timed(fn: Callable[[], object]) -> float:
    time.sleep(0.05)  # the previous method's threads stop spinning
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def fastest(fn: Callable[[], object], repeats: int) -> float:
    return min(timed(fn) for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("export", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=250, help="images per turn at batch 1")
    parser.add_argument("--torch-batch1-images", type=int, default=2000)
    parser.add_argument("--images-per-exit", type=int, default=200, help="batch 1, by exit: images timed per exit")
    parser.add_argument("--limit", type=int, help="only the first N test images (a quick try)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    run = open_run(args.run)
    clf = shallowdeep.load(run.path)
    net = clf.net
    runtime = load_export(args.export, threads=args.threads)
    manifest = runtime.manifest
    test = load_run_data(run).test
    images, labels = test.images.numpy(), test.labels.numpy()
    if args.limit:
        images, labels = images[:args.limit], labels[:args.limit]
    n = len(images)
    x = normalize(torch.from_numpy(images), clf.mean, clf.std)
    x_last = x.contiguous(memory_format=torch.channels_last)
    x_np = x.numpy()
    net_last = copy.deepcopy(net).to(memory_format=torch.channels_last)
    with tempfile.TemporaryDirectory() as tmp:
        backbone = onnx_backbone(net, tuple(clf.input_shape), args.threads, Path(tmp))
        plain = onnx_backbone(net, tuple(clf.input_shape), args.threads, Path(tmp), blocked=False)
    ort_backbone = lambda batch: backbone.run(None, {"x": batch})[0]  # noqa: E731
    ort_backbone_plain = lambda batch: plain.run(None, {"x": batch})[0]  # noqa: E731
    print(f"{n} test images, {args.threads} threads; policy {runtime.policy.name} at {runtime.policy.threshold} "
          f"({runtime.policy.source.get('early_exit_result')})")

    # batch 1, the whole test split, methods taking turns on chunks
    print("batch 1 ...", flush=True)
    runtime.predict(images[:8], batch_size=1)  # warm-up, sessions made
    ort_backbone(x_np[:1])
    ort_backbone_plain(x_np[:1])
    seconds = {"ort_early_exit": 0.0, "ort_backbone": 0.0, "ort_backbone_plain": 0.0, "torch_backbone": 0.0,
               "torch_backbone_channels_last": 0.0}
    torch_images = min(n, args.torch_batch1_images)
    exits_b1 = np.empty(n, np.int64)
    for start in range(0, n, args.chunk):
        part = slice(start, min(n, start + args.chunk))
        seconds["ort_early_exit"] += timed(lambda: exits_b1.__setitem__(part, runtime.predict(images[part], 1).exits))
        seconds["ort_backbone"] += timed(lambda: [ort_backbone(x_np[i:i + 1]) for i in range(part.start, part.stop)])
        seconds["ort_backbone_plain"] += timed(
            lambda: [ort_backbone_plain(x_np[i:i + 1]) for i in range(part.start, part.stop)])
        if start < torch_images:
            stop = min(part.stop, torch_images)
            with torch.inference_mode():
                seconds["torch_backbone"] += timed(lambda: [run_backbone(net, x[i:i + 1]) for i in range(start, stop)])
                seconds["torch_backbone_channels_last"] += timed(
                    lambda: [run_backbone(net_last, x_last[i:i + 1]) for i in range(start, stop)])
    per_image_ms = {k: 1e3 * v / (torch_images if k.startswith("torch") else n) for k, v in seconds.items()}
    flops = np.asarray(manifest.exit_flops)
    predicted_b1 = manifest.backbone_flops / flops[exits_b1].mean()
    realised_b1 = per_image_ms["ort_backbone"] / per_image_ms["ort_early_exit"]

    # batch 1, by exit: the images leaving at each exit, one at a time, with early exit and then with the backbone
    print("batch 1 by exit ...", flush=True)
    fused = runtime.fused_session()
    by_exit = []
    for k in range(runtime.num_ics + 1):
        ones = [x_np[i:i + 1] for i in np.flatnonzero(exits_b1 == k)[: args.images_per_exit]]
        ee = fastest(lambda: [fused.run(None, {"h": one}) for one in ones], args.repeats) if ones else 0.0
        bb = fastest(lambda: [ort_backbone(one) for one in ones], args.repeats) if ones else 0.0
        by_exit.append({"exit": manifest.exit_names[k], "images": len(ones), "share": float((exits_b1 == k).mean()),
                        "time_over_backbone": ee / bb if ones else None,
                        "flops_over_backbone": float(flops[k] / manifest.backbone_flops)})
    timed_exits = [e for e in by_exit if e["images"]]
    exit_time_predicted_b1 = sum(e["share"] for e in timed_exits) / sum(
        e["share"] * e["time_over_backbone"] for e in timed_exits)

    # batch 128, streaming
    print("batch 128 ...", flush=True)
    batch = 128
    chunks_np = [x_np[i:i + batch] for i in range(0, n, batch)]
    chunks_last = list(x_last.split(batch))
    policy = make_policy(runtime.policy.name, runtime.policy.threshold)
    stream_out: dict[str, np.ndarray] = {}

    def ort_stream() -> None:
        logits, exits, _ = runtime.stream(iter(chunks_np), batch)
        stream_out.update(classes=logits.argmax(1), exits=exits)

    def torch_stream() -> None:
        with torch.inference_mode():
            classes, exits, _ = early_exit_stream(net_last, iter(chunks_last), policy=policy, batch_size=batch)
        stream_out.update(torch_classes=classes.numpy(), torch_exits=exits.numpy())

    def torch_backbone_128() -> None:
        with torch.inference_mode():
            for c in chunks_last:
                run_backbone(net_last, c)

    b128 = {"ort_early_exit": ort_stream, "ort_backbone": lambda: [ort_backbone(c) for c in chunks_np],
            "ort_backbone_plain": lambda: [ort_backbone_plain(c) for c in chunks_np],
            "torch_backbone_channels_last": torch_backbone_128, "torch_stream_channels_last": torch_stream}
    best128 = {name: float("inf") for name in b128}
    for _ in range(args.repeats):
        for name, fn in b128.items():
            best128[name] = min(best128[name], timed(fn))
    images_per_s = {k: n / v for k, v in best128.items()}
    # what the stages' own times predict: each stage timed on 128 real inputs, weighted by the share reaching it
    values = runtime.entering(x_np[:batch], np.arange(batch))
    stage_seconds = []
    for index in range(runtime.num_ics + 1):
        stage_seconds.append(fastest(lambda: runtime.run_stage(index, values, never_stop=True), args.repeats + 2))
        out = runtime.run_stage(index, values, never_stop=True)
        values = {name.removesuffix("_next"): v for name, v in out.items() if name.endswith("_next")}
    reaching = [(stream_out["exits"] >= k).mean() for k in range(runtime.num_ics + 1)]
    time_predicted_128 = (best128["ort_backbone"] * batch / n) / float(np.dot(reaching, stage_seconds))
    faster_backbone = min(best128["ort_backbone"], best128["torch_backbone_channels_last"])
    predicted_128 = manifest.backbone_flops / flops[stream_out["exits"]].mean()
    realised_128 = faster_backbone / best128["ort_early_exit"]

    # answers: the runtime against PyTorch's engine, and against the early-exit result on the evaluation half
    same_exit = stream_out["exits"] == stream_out["torch_exits"]
    same_class = stream_out["classes"] == stream_out["torch_classes"]
    source = runtime.policy.source
    evaluation_half = None
    if (source.get("calibrated_on") or {}).get("source") == "test-half" and not args.limit:
        _, evaluation = split_halves(n, int(source["calibrated_on"]["seed"]))
        exits = stream_out["exits"][evaluation]
        evaluation_half = {
            "runtime": {"accuracy": float((stream_out["classes"][evaluation] == labels[evaluation]).mean()),
                        "flops_fraction": float(flops[exits].mean() / manifest.backbone_flops),
                        "exit_shares": np.bincount(exits, minlength=len(flops)).astype(float) / len(exits)},
            "early_exit_result": {k: source["test"][k] for k in ("accuracy", "flops_fraction", "exit_shares")}}
        evaluation_half["runtime"]["exit_shares"] = evaluation_half["runtime"]["exit_shares"].tolist()
        evaluation_half["equal"] = all(np.allclose(evaluation_half["runtime"][k], evaluation_half["early_exit_result"][k],
                                                   atol=1e-9) for k in ("accuracy", "flops_fraction", "exit_shares"))

    measures = {
        "batch1_share_of_predicted": realised_b1 / predicted_b1,
        "final_head_slowdown": by_exit[-1]["time_over_backbone"],
        "batch128_share_of_predicted": realised_128 / predicted_128,
        "batch1_over_pytorch_eager": per_image_ms["torch_backbone"] / per_image_ms["ort_early_exit"],
    }
    result = {
        "benchmark": "deploy",
        "settings": {"run": str(args.run), "export": str(args.export), "images": n, "threads": args.threads,
                     "repeats": args.repeats, "policy": runtime.policy.name, "threshold": runtime.policy.threshold,
                     "early_exit_result": source.get("early_exit_result"),
                     "torch_batch1_images": torch_images, "images_per_exit": args.images_per_exit,
                     "command": "python " + " ".join(map(shlex.quote, sys.argv)),
                     "torch": torch.__version__, "onnxruntime": ort.__version__, "python": platform.python_version(),
                     "machine": platform.machine()},
        "batch1": {"ms_per_image": per_image_ms, "flops_predicted_speedup": predicted_b1,
                   "realised_speedup": realised_b1,
                   "ort_backbone_over_torch_backbone": per_image_ms["torch_backbone"] / per_image_ms["ort_backbone"],
                   "ort_backbone_over_torch_channels_last": per_image_ms["torch_backbone_channels_last"]
                   / per_image_ms["ort_backbone"],
                   "layout_rewrites_speedup": per_image_ms["ort_backbone_plain"] / per_image_ms["ort_backbone"]},
        "final_head": {"median_ratio": measures["final_head_slowdown"]},
        "batch1_by_exit": {"exits": by_exit, "exit_time_predicted_speedup": exit_time_predicted_b1,
                           "realised_over_exit_time_predicted": realised_b1 / exit_time_predicted_b1},
        "batch128": {"images_per_second": images_per_s, "flops_predicted_speedup": predicted_128,
                     "stage_ms": [1e3 * s for s in stage_seconds], "share_reaching_stage": reaching,
                     "stage_time_predicted_speedup_over_ort_backbone": time_predicted_128,
                     "realised_over_stage_time_predicted": best128["ort_backbone"] / best128["ort_early_exit"]
                     / time_predicted_128,
                     "realised_speedup_over_faster_backbone": realised_128,
                     "faster_backbone": min(("ort_backbone", "torch_backbone_channels_last"), key=best128.get),
                     "ort_backbone_over_torch_channels_last": best128["torch_backbone_channels_last"]
                     / best128["ort_backbone"],
                     "layout_rewrites_speedup": best128["ort_backbone_plain"] / best128["ort_backbone"]},
        "answers": {"samples": n, "same_exit": int(same_exit.sum()), "same_class": int(same_class.sum()),
                    "differing": np.flatnonzero(~(same_exit & same_class)).tolist()[:20],
                    "batch1_equals_streamed": bool(np.array_equal(exits_b1, stream_out["exits"]))},
        "evaluation_half": evaluation_half,
        "measures": measures,
        "targets": TARGETS,
        "met": {k: (v is not None and (v <= TARGETS[k] if k == "final_head_slowdown" else v >= TARGETS[k]))
                for k, v in measures.items()},
    }
    print(strict_json({k: result[k] for k in ("batch1", "final_head", "batch1_by_exit", "batch128", "answers",
                                              "evaluation_half", "measures", "met")}, indent=2))
    atomic_write_json(args.output, result)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
