"""The early-exit server under load, against the same server on the backbone alone, in one run.

    python benchmarks/bench_serve.py EXPORT BACKBONE_EXPORT IMAGES_DIR [--clients 1,8,32] [--threads 2]

EXPORT: ``shallowdeep export RUN`` at the threshold of ``early-exit RUN --calibrate-on test-half --max-drop
0.01``; BACKBONE_EXPORT: ``shallowdeep export RUN --no-exits``; IMAGES_DIR: the test images (every file under
it, in path order). For each server and each concurrency, a ``shallowdeep serve`` process (--threads threads) gets
every image once, as the raw bytes of its file, from that many concurrent HTTP clients (aiohttp, on the same
machine), with at most --max-seconds of sending per run. Reports per run: images/s, p50, p99 and p99.9 latency,
errors and the exit histogram; the early-exit server's answers against ``predict`` (the runtime on the same
files); its memory (RSS) after a warm-up and after all runs; and the targets: throughput at 32 clients, early
exit / backbone, against the FLOPs-predicted speed-up (>= 0.8 of it); p50 at 1 client, early exit / backbone,
against the average cost share (<= 1.1 times it); no error at 32 clients; memory within 10 %.
Writes benchmarks/results/serve.json. Run it on a quiet machine (``nice -n -20``).
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import numpy as np

from shallowdeep.images import image_files
from shallowdeep.io import atomic_write_json, strict_json
from shallowdeep.runtime import load

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO / "benchmarks" / "results" / "serve.json"


class ServerProcess:
    def __init__(self, export: Path, threads: int) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "shallowdeep", "serve", str(export), "--port", "0",
                                         "--threads", str(threads)], stdout=subprocess.PIPE, text=True)
        self.url = re.search(r"on (http://\S+)", self.process.stdout.readline()).group(1)

    def rss_mib(self) -> float:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024

    def stop(self) -> str:
        self.process.send_signal(signal.SIGTERM)
        out, _ = self.process.communicate(timeout=120)
        return out.strip()


async def wait_ready(url: str) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(600):
            try:
                async with session.get(f"{url}/health") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} never became ready")


async def load_run(url: str, payloads: list[bytes], clients: int, max_seconds: float) -> dict:
    """Every payload once, from ``clients`` concurrent clients; latencies, statuses and answers by image."""
    next_index, deadline = iter(range(len(payloads))), time.monotonic() + max_seconds
    latencies, errors = [], {}
    answers: dict[int, dict] = {}

    async def client(session: aiohttp.ClientSession) -> None:
        for i in next_index:
            if time.monotonic() > deadline:
                return
            start = time.perf_counter()
            try:
                async with session.post(f"{url}/predict", data=payloads[i],
                                        headers={"Content-Type": "application/octet-stream"}) as response:
                    body = await response.json()
                    status = response.status
            except aiohttp.ClientError as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                continue
            latencies.append(time.perf_counter() - start)
            if status != 200:
                errors[str(status)] = errors.get(str(status), 0) + 1
            else:
                answers[i] = body["predictions"][0]

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        start = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(clients)))
        seconds = time.perf_counter() - start
    lat = np.asarray(latencies) * 1e3
    exits = np.bincount([a["exit"] for a in answers.values()]) if answers else np.zeros(0)
    return {"clients": clients, "requests": len(latencies) + sum(v for k, v in errors.items() if not k.isdigit()),
            "answered": len(answers), "seconds": seconds, "images_per_second": len(answers) / seconds,
            "latency_ms": {"p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)),
                           "p99.9": float(np.percentile(lat, 99.9)), "mean": float(lat.mean())},
            "errors": errors, "exit_histogram": exits.tolist(),
            "mean_flops": float(np.mean([a["flops"] for a in answers.values()])), "_answers": answers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export", type=Path)
    parser.add_argument("backbone", type=Path)
    parser.add_argument("images", type=Path)
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-seconds", type=float, default=120.0)
    parser.add_argument("--limit", type=int, help="only the first N images")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args()
    files = image_files([args.images])[: args.limit]
    payloads = [f.read_bytes() for f in files]
    concurrency = [int(c) for c in args.clients.split(",")]
    print(f"{len(files)} images, clients {concurrency}, server threads {args.threads}", flush=True)

    runs: dict[str, list[dict]] = {}
    memory = {}
    for name, export in (("early_exit", args.export), ("backbone", args.backbone)):
        server = ServerProcess(export, args.threads)
        try:
            asyncio.run(wait_ready(server.url))
            asyncio.run(load_run(server.url, payloads[:200], 4, args.max_seconds))  # warm-up
            before = server.rss_mib()
            runs[name] = []
            for clients in concurrency:
                result = asyncio.run(load_run(server.url, payloads, clients, args.max_seconds))
                print(f"{name:10s} {clients:3d} clients: {result['images_per_second']:7.1f} images/s, p50 "
                      f"{result['latency_ms']['p50']:.2f} ms, p99 {result['latency_ms']['p99']:.2f} ms, errors "
                      f"{result['errors']}, exits {result['exit_histogram']}", flush=True)
                runs[name].append(result)
            memory[name] = {"after_warm_up_mib": before, "after_runs_mib": server.rss_mib()}
        finally:
            stopped = server.stop()
        memory[name]["stopped"] = stopped

    runtime = load(args.export, threads=args.threads)
    expected = runtime.predict_files(files)
    mismatches = 0
    for result in runs["early_exit"]:
        for i, answer in result["_answers"].items():
            mismatches += (answer["class_index"] != expected.indices[i]) or (answer["exit"] != expected.exits[i])
    manifest = runtime.manifest
    by_clients = {name: {r["clients"]: r for r in rs} for name, rs in runs.items()}
    top, one = max(concurrency), min(concurrency)
    ee_top, bb_top = by_clients["early_exit"][top], by_clients["backbone"][top]
    predicted = manifest.backbone_flops / ee_top["mean_flops"]
    cost_share = ee_top["mean_flops"] / manifest.backbone_flops
    measures = {
        "throughput_share_of_predicted": ee_top["images_per_second"] / bb_top["images_per_second"] / predicted,
        "p50_ratio_over_cost_share": by_clients["early_exit"][one]["latency_ms"]["p50"]
        / by_clients["backbone"][one]["latency_ms"]["p50"] / cost_share,
        "errors_at_top_concurrency": sum(ee_top["errors"].values()),
        "answers_differing_from_predict": int(mismatches),
        "memory_growth": memory["early_exit"]["after_runs_mib"] / memory["early_exit"]["after_warm_up_mib"] - 1,
    }
    targets = {"throughput_share_of_predicted": (">=", 0.8), "p50_ratio_over_cost_share": ("<=", 1.1),
               "errors_at_top_concurrency": ("<=", 0), "answers_differing_from_predict": ("<=", 0),
               "memory_growth": ("<=", 0.1)}
    met = {k: (measures[k] >= v if op == ">=" else measures[k] <= v) for k, (op, v) in targets.items()}
    for rs in runs.values():
        for r in rs:
            r.pop("_answers")
    result = {"benchmark": "serve",
              "settings": {"export": str(args.export), "backbone": str(args.backbone), "images": len(files),
                           "clients": concurrency, "threads": args.threads, "max_seconds": args.max_seconds,
                           "policy": runtime.policy.name, "threshold": runtime.policy.threshold,
                           "command": "python " + " ".join(map(shlex.quote, sys.argv)),
                           "python": platform.python_version(), "machine": platform.machine(),
                           "note": "server and load generator share the machine's cores"},
              "flops_predicted_speedup": predicted, "average_cost_share": cost_share,
              "runs": runs, "memory": memory, "measures": measures, "targets": targets, "met": met}
    print(strict_json({"measures": measures, "met": met, "memory": memory}, indent=2))
    atomic_write_json(args.output, result)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
