"""The early-exit server under load, against the same server on the backbone alone, in one run.

    python benchmarks/bench_serve.py EXPORT BACKBONE_EXPORT IMAGES_DIR [--clients 1,8,32] [--threads 2]

EXPORT: ``shallowdeep export RUN`` at the threshold of ``early-exit RUN --calibrate-on test-half --max-drop
0.01``; BACKBONE_EXPORT: ``shallowdeep export RUN --no-exits``; IMAGES_DIR: the test images (every file under it,
in path order). For each server and each concurrency, a ``shallowdeep serve`` process (--threads threads) gets
every image once, as the raw bytes of its file, from that many concurrent HTTP clients (keep-alive connections of
a lean client, on the same machine), with at most --max-seconds of sending per run. Reports per run: images/s,
p50, p99 and p99.9 latency, errors and the exit histogram; the early-exit server's answers against ``predict``
(the runtime on the same files); the runtime alone in this process, without HTTP, on batches of the highest
concurrency (what the server could reach), and one image at a time through the fused graph (the p50 a lone
request would have if HTTP cost nothing; the server's p50 less it is what HTTP costs per request); its memory (RSS) after a warm-up (1,000 images at the highest
concurrency, one per request, then as many again grouped) and after all runs; and the targets: throughput at 32
clients, early exit / backbone, against the FLOPs-predicted speed-up (>= 0.8 of it; also reported, without a
target, for a last run at that concurrency whose requests carry --images-per-request images each); p50 at 1
client, early exit / backbone, against the average cost share (<= 1.1 times it); no error at 32 clients; memory
within 10 %.
Writes benchmarks/results/serve.json. Run it on a quiet machine (``nice -n -20``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import numpy as np

from shallowdeep.images import image_files
from shallowdeep.io import atomic_write_json, strict_json
from shallowdeep.runtime import Runtime, load

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


class Connection:
    """One keep-alive HTTP/1.1 connection that posts raw bytes: a load generator must cost the shared cores
    little, and a general-purpose client (aiohttp's) spends more per request than the server's own parsing."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> None:
        self.reader, self.writer, self.host = reader, writer, host

    @classmethod
    async def open(cls, url: str) -> "Connection":
        host, port = url.removeprefix("http://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        return cls(reader, writer, f"{host}:{port}")

    async def post(self, path: str, body: bytes, content_type: str) -> tuple[int, bytes]:
        self.writer.write(f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: {content_type}"
                          f"\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = next(int(line.split(":", 1)[1]) for line in lines[1:] if line.lower().startswith("content-length:"))
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


@dataclass
class Request:
    """One /predict request: its body and content type, and the indices of the images it carries."""

    body: bytes
    content_type: str
    images: range


def requests_of(payloads: list[bytes], per_request: int) -> list[Request]:
    """The images' files, one per request as raw bytes, or ``per_request`` at a time as a multipart form."""
    if per_request == 1:
        return [Request(p, "application/octet-stream", range(i, i + 1)) for i, p in enumerate(payloads)]
    boundary = "shallowdeep-bench-boundary"
    requests = []
    for start in range(0, len(payloads), per_request):
        images = range(start, min(start + per_request, len(payloads)))
        parts = [f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{i}.jpg\"\r\n"
                 f"Content-Type: application/octet-stream\r\n\r\n".encode() + payloads[i] + b"\r\n" for i in images]
        requests.append(Request(b"".join(parts) + f"--{boundary}--\r\n".encode(),
                                f"multipart/form-data; boundary={boundary}", images))
    return requests


async def load_run(url: str, requests: list[Request], clients: int, max_seconds: float) -> dict:
    """Every request once, from ``clients`` concurrent clients (one connection each); latencies, statuses and
    answers by image."""
    next_index, deadline = iter(range(len(requests))), time.monotonic() + max_seconds
    latencies, errors = [], {}
    answers: dict[int, dict] = {}

    async def client() -> None:
        connection = await Connection.open(url)
        try:
            for i in next_index:
                if time.monotonic() > deadline:
                    return
                start = time.perf_counter()
                try:
                    status, body = await connection.post("/predict", requests[i].body, requests[i].content_type)
                except (OSError, asyncio.IncompleteReadError) as exc:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    connection.close()
                    connection = await Connection.open(url)
                    continue
                latencies.append(time.perf_counter() - start)
                if status != 200:
                    errors[str(status)] = errors.get(str(status), 0) + 1
                else:
                    answers.update(zip(requests[i].images, json.loads(body)["predictions"]))
        finally:
            connection.close()

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    seconds = time.perf_counter() - start
    lat = np.asarray(latencies) * 1e3
    exits = np.bincount([a["exit"] for a in answers.values()]) if answers else np.zeros(0)
    return {"clients": clients, "requests": len(latencies) + sum(v for k, v in errors.items() if not k.isdigit()),
            "answered": len(answers), "seconds": seconds, "images_per_second": len(answers) / seconds,
            "latency_ms": {"p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)),
                           "p99.9": float(np.percentile(lat, 99.9)), "mean": float(lat.mean())},
            "errors": errors, "exit_histogram": exits.tolist(),
            "mean_flops": float(np.mean([a["flops"] for a in answers.values()])), "_answers": answers}


def runtime_alone(runtime: Runtime, images: np.ndarray, batch: int) -> float:
    """Images/s of the runtime in this process, no HTTP: each batch of ``batch`` images run through every stage
    before the next (as ``batch`` clients that each wait for their answer keep the server fed)."""
    x = runtime.preprocess(images)
    runtime.stream([x[:batch]])
    start = time.perf_counter()
    for i in range(0, len(x), batch):
        runtime.stream([x[i:i + batch]])
    return len(x) / (time.perf_counter() - start)


def runtime_alone_p50_ms(runtime: Runtime, images: np.ndarray) -> float:
    """The median time of one image through the fused graph in this process, no HTTP (as a lone request runs)."""
    x = runtime.preprocess(images)
    runtime.fused(x[:1])
    times = []
    for i in range(len(x)):
        start = time.perf_counter()
        runtime.fused(x[i:i + 1])
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export", type=Path)
    parser.add_argument("backbone", type=Path)
    parser.add_argument("images", type=Path)
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-seconds", type=float, default=120.0)
    parser.add_argument("--limit", type=int, help="only the first N images")
    parser.add_argument("--images-per-request", type=int, default=8,
                        help="a last run at the highest concurrency sends this many images per request (multipart)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args()
    files = image_files([args.images])[: args.limit]
    payloads = [f.read_bytes() for f in files]
    single, grouped = requests_of(payloads, 1), requests_of(payloads, args.images_per_request)
    concurrency = [int(c) for c in args.clients.split(",")]
    print(f"{len(files)} images, clients {concurrency}, server threads {args.threads}", flush=True)

    runs: dict[str, list[dict]] = {}
    memory = {}
    for name, export in (("early_exit", args.export), ("backbone", args.backbone)):
        server = ServerProcess(export, args.threads)
        try:
            asyncio.run(wait_ready(server.url))
            for warm_up in (single[:1000], grouped[:1000 // args.images_per_request]):  # every shape of the runs
                asyncio.run(load_run(server.url, warm_up, max(concurrency), args.max_seconds))
            before = server.rss_mib()
            runs[name] = []
            for clients, requests in [(c, single) for c in concurrency] + [(max(concurrency), grouped)]:
                result = asyncio.run(load_run(server.url, requests, clients, args.max_seconds))
                result["images_per_request"] = len(requests[0].images)
                print(f"{name:10s} {clients:3d} clients, {result['images_per_request']} per request: "
                      f"{result['images_per_second']:7.1f} images/s, p50 "
                      f"{result['latency_ms']['p50']:.2f} ms, p99 {result['latency_ms']['p99']:.2f} ms, errors "
                      f"{result['errors']}, exits {result['exit_histogram']}", flush=True)
                runs[name].append(result)
            memory[name] = {"after_warm_up_mib": before, "after_runs_mib": server.rss_mib()}
        finally:
            stopped = server.stop()
        memory[name]["stopped"] = stopped

    runtime = load(args.export, threads=args.threads)
    files_read, pixels = runtime.read_images(files)
    expected = runtime.predict(pixels, batch_size=1)
    ceiling = {name: runtime_alone(load(folder, threads=args.threads), pixels, max(concurrency))
               for name, folder in (("early_exit", args.export), ("backbone", args.backbone))}
    alone_p50 = {name: runtime_alone_p50_ms(load(folder, threads=args.threads), pixels)
                 for name, folder in (("early_exit", args.export), ("backbone", args.backbone))}
    print(f"the runtime alone, batches of {max(concurrency)} run through: early exit "
          f"{ceiling['early_exit']:.0f} images/s, backbone {ceiling['backbone']:.0f} images/s; one image at a time, "
          f"p50 {alone_p50['early_exit']:.3f} ms and {alone_p50['backbone']:.3f} ms", flush=True)
    mismatches = 0
    for result in runs["early_exit"]:
        for i, answer in result["_answers"].items():
            mismatches += (answer["class_index"] != expected.indices[i]) or (answer["exit"] != expected.exits[i])
    manifest = runtime.manifest
    by_clients = {name: {r["clients"]: r for r in rs if r["images_per_request"] == 1} for name, rs in runs.items()}
    ee_grouped, bb_grouped = runs["early_exit"][-1], runs["backbone"][-1]
    top, one = max(concurrency), min(concurrency)
    ee_top, bb_top = by_clients["early_exit"][top], by_clients["backbone"][top]
    predicted = manifest.backbone_flops / ee_top["mean_flops"]
    cost_share = ee_top["mean_flops"] / manifest.backbone_flops
    measures = {
        "throughput_share_of_predicted": ee_top["images_per_second"] / bb_top["images_per_second"] / predicted,
        "runtime_alone_share_of_predicted": ceiling["early_exit"] / ceiling["backbone"] / predicted,
        "p50_ratio_over_cost_share": by_clients["early_exit"][one]["latency_ms"]["p50"]
        / by_clients["backbone"][one]["latency_ms"]["p50"] / cost_share,
        "runtime_alone_p50_ratio_over_cost_share": alone_p50["early_exit"] / alone_p50["backbone"] / cost_share,
        "http_ms_per_lone_request": {name: by_clients[name][one]["latency_ms"]["p50"] - alone_p50[name]
                                     for name in alone_p50},
        "errors_at_top_concurrency": sum(ee_top["errors"].values()),
        f"throughput_share_of_predicted_{args.images_per_request}_per_request":
        ee_grouped["images_per_second"] / bb_grouped["images_per_second"] / predicted,
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
                           "clients": concurrency, "images_per_request_last_run": args.images_per_request,
                           "threads": args.threads, "max_seconds": args.max_seconds,
                           "policy": runtime.policy.name, "threshold": runtime.policy.threshold,
                           "command": "python " + " ".join(map(shlex.quote, sys.argv)),
                           "python": platform.python_version(), "machine": platform.machine(),
                           "note": "server and load generator share the machine's cores"},
              "flops_predicted_speedup": predicted, "average_cost_share": cost_share,
              "runtime_alone_images_per_second": ceiling, "runtime_alone_p50_ms": alone_p50,
              "runs": runs, "memory": memory, "measures": measures, "targets": targets, "met": met}
    print(strict_json({"measures": measures, "met": met, "memory": memory}, indent=2))
    atomic_write_json(args.output, result)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
