"""``shallowdeep serve`` as clients meet it: a real server process on a free local port, a real HTTP client.

Answers equal ``predict`` on the same files, whatever else shares their batch; concurrent clients; every kind of
bad input gets its status and one line; a full queue gets 503 with Retry-After; SIGTERM answers the requests in
flight; the metrics add up.
"""

from __future__ import annotations

import http.client
import json
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import shallowdeep
from shallowdeep.export import export_sdn
from shallowdeep.runtime import Policy, load
from shallowdeep.serve.app import INLINE_PIXELS

pytest.importorskip("aiohttp")
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]  # a server in a subprocess


def _tiny() -> torch.nn.Module:
    def block(i: int, o: int, stride: int) -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Conv2d(i, o, 3, stride, 1), torch.nn.ReLU())
    return torch.nn.Sequential(block(3, 8, 1), block(8, 16, 2), block(16, 16, 2), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(16, 4))


@pytest.fixture(scope="module")
def deployed(tmp_path_factory, one_thread):
    """An exported SDN with two ICs (a threshold sending images out at several exits) and 14 image files."""
    root = tmp_path_factory.mktemp("serve")
    torch.manual_seed(0)
    net = shallowdeep.attach(_tiny().eval(), (3, 16, 16), 4, fractions=(0.3, 0.6)).eval()
    rng = np.random.default_rng(0)
    files = []
    for i in range(12):
        path = root / f"{i:02d}.{'png' if i % 2 else 'jpg'}"
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(path)
        files.append(path)
    odd = root / "odd.png"  # another size, with alpha: converted as predict converts it
    Image.fromarray(rng.integers(0, 256, (40, 50, 4), dtype=np.uint8), "RGBA").save(odd)
    files.append(odd)
    big = root / "big.jpg"  # more pixels than the server decodes on its event loop: decoded on a worker thread
    ramp = np.add.outer(np.arange(260), np.arange(300)) % 256
    Image.fromarray(np.stack([ramp, ramp * 3 % 256, 255 - ramp], 2).astype(np.uint8)).save(big)
    assert 260 * 300 > INLINE_PIXELS
    files.append(big)
    export_sdn(net, root / "export", classes=["a", "b", "c", "d"], mean=(0.5,) * 3, std=(0.25,) * 3,
               policy=Policy("maxprob", 2.0), input_shape=(3, 16, 16))
    runtime = load(root / "export")
    first_ic = runtime.exit_logits(runtime.read_images(files)[1])[0]
    probabilities = np.exp(first_ic - first_ic.max(1, keepdims=True))
    threshold = float(np.median((probabilities / probabilities.sum(1, keepdims=True)).max(1)))
    return root, files, f"{threshold:.6f}"  # about half the images leave at the first IC


class Server:
    """A ``shallowdeep serve`` process on a free port."""

    def __init__(self, export: Path, threshold: str, *options: str) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "shallowdeep", "serve", str(export), "--port", "0",
                                         "--threads", "1", "--threshold", threshold, *options], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True)
        line = self.process.stdout.readline()
        match = re.search(r"on http://([\d.]+):(\d+)", line)
        assert match, line + self.process.stderr.read()
        self.host, self.port = match.group(1), int(match.group(2))
        for _ in range(200):
            if self.get("/health")[0] == 200:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the server never became ready")

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=60)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            connection.close()

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            status, _, body = self.request("GET", path)
            return status, body
        except OSError:
            return 0, b""

    def predict(self, data: bytes) -> tuple[int, dict]:
        status, headers, body = self.request("POST", "/predict", data, {"Content-Type": "application/octet-stream"})
        return status, {**json.loads(body), "_headers": headers}

    def predict_many(self, files: list[tuple[str, bytes]]) -> tuple[int, dict]:
        boundary = "shallowdeep-test-boundary"
        body = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
                        f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n"
                        for name, data in files) + f"--{boundary}--\r\n".encode()
        status, headers, response = self.request("POST", "/predict", body,
                                                 {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        return status, {**json.loads(response), "_headers": headers}

    def stop(self) -> tuple[int, str]:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        out, _ = self.process.communicate(timeout=60)
        return self.process.returncode, out


@pytest.fixture(scope="module")
def server(deployed):
    root, _, threshold = deployed
    running = Server(root / "export", threshold, "--max-bytes", "200000")
    yield running
    running.stop()


def _expected(root: Path, files: list[Path], threshold: str) -> list[dict]:
    answer = load(root / "export", float(threshold)).predict_files(files, batch_size=1)
    return [{"class_index": int(i), "exit": int(e), "flops": int(f), "confidence": float(c)}
            for i, e, f, c in zip(answer.indices, answer.exits, answer.flops, answer.confidence)]


def _short(prediction: dict) -> dict:
    return {k: prediction[k] for k in ("class_index", "exit", "flops", "confidence")}


def test_answers_equal_predict_alone_in_a_batch_and_among_concurrent_clients(deployed, server):
    root, files, threshold = deployed
    expected = _expected(root, files, threshold)
    assert len({e["exit"] for e in expected}) > 1  # the threshold sends images out at several exits
    alone = [server.predict(f.read_bytes()) for f in files]
    assert all(status == 200 for status, _ in alone)
    assert [_short(body["predictions"][0]) for _, body in alone] == expected
    status, together = server.predict_many([(f.name, f.read_bytes()) for f in files])
    assert status == 200 and [_short(p) for p in together["predictions"]] == expected
    assert [p["name"] for p in together["predictions"]] == [f.name for f in files]
    with ThreadPoolExecutor(8) as pool:  # many clients at once: batches mix images of different requests
        crowd = list(pool.map(lambda i: server.predict(files[i % len(files)].read_bytes()), range(64)))
    assert [_short(body["predictions"][0]) for _, body in crowd] == [expected[i % len(files)] for i in range(64)]
    names = load(root / "export").manifest.exit_names
    for prediction in together["predictions"]:
        assert prediction["class"] == "abcd"[prediction["class_index"]]
        assert prediction["exit_name"] == names[prediction["exit"]]


def _png_with_header(width: int, height: int, data: bytes) -> bytes:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(data)) + chunk(b"IEND", b""))


def test_bad_input_gets_its_status_and_one_line(deployed, server):
    root, files, _ = deployed
    good = files[1].read_bytes()
    cases = {b"": (400, "image"), b"not an image at all": (400, "image"), good[: len(good) // 2]: (400, "image"),
             _png_with_header(100_000, 100_000, b"\0" * 100): (400, "pixels"),
             _png_with_header(1, 4_000_000, b"\0" * 100): (400, "truncated"),
             b"\xff" * 300_000: (413, "limit")}
    for body, (status, word) in cases.items():
        got, answer = server.predict(body)
        assert got == status and word in answer["error"] and "\n" not in answer["error"], (got, answer)
    status, answer = server.predict_many([("ok.png", good), ("bad.png", b"junk")])
    assert status == 400 and "bad.png" in answer["error"]
    status, _, _ = server.request("GET", "/predict")
    assert status == 405
    for sent in (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n" + good[:10],  # cut short
                 b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(good) + good):
        with socket.create_connection((server.host, server.port)) as gone:  # leaves before the answer
            gone.sendall(sent)
    assert server.predict(good)[0] == 200  # still serving


def test_metrics_add_up(deployed):
    root, files, threshold = deployed
    running = Server(root / "export", threshold)
    try:
        answers = [running.predict(f.read_bytes()) for f in files]
        running.predict(b"junk")
        flops = [body["predictions"][0]["flops"] for _, body in answers]
        exits = [body["predictions"][0]["exit"] for _, body in answers]
        status, text = running.get("/metrics")
        metrics = _parse(text.decode())
        assert status == 200
        assert metrics['shallowdeep_requests_total{code="200"}'] == len(files)
        assert metrics['shallowdeep_requests_total{code="400"}'] == 1
        assert metrics['shallowdeep_errors_total{kind="bad_image"}'] == 1
        assert metrics["shallowdeep_images_total"] == len(files)
        per_exit = [v for k, v in metrics.items() if k.startswith("shallowdeep_exit_images_total")]
        assert sum(per_exit) == len(files) and sorted(per_exit, reverse=True)[0] == max(np.bincount(exits))
        assert metrics["shallowdeep_flops_per_image"] == pytest.approx(np.mean(flops), rel=1e-5)
        assert metrics["shallowdeep_request_latency_seconds_count"] == len(files) + 1
        assert 0 < metrics['shallowdeep_request_latency_seconds{quantile="0.5"}'] < 5
    finally:
        running.stop()


def _parse(text: str) -> dict[str, float]:
    return {line.rpartition(" ")[0]: float(line.rpartition(" ")[2]) for line in text.splitlines()
            if line and not line.startswith("#")}


def test_a_full_queue_answers_503_with_retry_after(deployed):
    root, files, threshold = deployed
    running = Server(root / "export", threshold, "--max-queue", "2", "--max-batch", "1")
    expected = _expected(root, files, threshold)
    try:
        data = [f.read_bytes() for f in files]
        status, body = running.predict_many([("x.png", data[0])] * 3)  # never fits
        assert status == 503 and body["_headers"]["Retry-After"] == "1" and "retry later" in body["error"]
        with ThreadPoolExecutor(16) as pool:  # more clients than places: some are told to come back
            results = list(pool.map(lambda i: running.predict(data[i % len(data)]), range(96)))
        assert {s for s, _ in results} <= {200, 503}
        for i, (status, body) in enumerate(results):
            if status == 200:
                assert _short(body["predictions"][0]) == expected[i % len(data)]
            else:
                assert body["_headers"]["Retry-After"] == "1"
        assert [running.predict(d)[0] for d in data] == [200] * len(data)  # and it serves on
    finally:
        running.stop()


def test_sigterm_answers_the_requests_in_flight_then_exits_0(deployed):
    root, files, threshold = deployed
    running = Server(root / "export", threshold)
    data = files[1].read_bytes()
    statuses: list[object] = []
    started = threading.Barrier(9)

    def client() -> None:
        connection = http.client.HTTPConnection(running.host, running.port, timeout=60)
        connection.connect()
        started.wait()
        try:
            for _ in range(40):
                connection.request("POST", "/predict", body=data)
                response = connection.getresponse()
                statuses.append(response.status)
                response.read()
        except (ConnectionError, http.client.RemoteDisconnected, OSError) as exc:
            statuses.append(type(exc).__name__)

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    started.wait()
    time.sleep(0.2)
    code, out = running.stop()
    for t in threads:
        t.join()
    assert code == 0 and "every accepted request was answered" in out
    answered = [s for s in statuses if s == 200]
    assert answered and set(statuses) <= {200, "RemoteDisconnected", "ConnectionResetError", "BrokenPipeError"}
    accepted = int(re.search(r"(\d+) requests answered", out).group(1))
    assert accepted == len(answered)  # every request the server took was answered, and reached its client
