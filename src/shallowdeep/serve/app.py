"""The HTTP server of an export folder, on aiohttp: ``POST /predict``, ``GET /health``, ``GET /metrics``.

A request's images (the raw bytes of one image file, or several as multipart form parts) are read within
``max_bytes``, refused from their header when larger than ``max_pixels`` (a decompression bomb is never
decoded), decoded and resized exactly as ``shallowdeep predict`` reads files, then classified by the
:class:`~shallowdeep.serve.batcher.Batcher`. Errors are JSON ``{"error": "one line"}``: 400 for an image that
cannot be read, 413 for a body over the limit, 503 with ``Retry-After`` while loading or when the queue is full.
Stopping (:func:`serve`, on SIGTERM or Ctrl-C) refuses new connections, answers the requests in flight, then returns.
"""

from __future__ import annotations

import asyncio
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np
from aiohttp import web

from ..errors import UserError, first_line
from ..images import TooManyPixels, decode_image_bytes
from ..runtime import Runtime, load
from .batcher import Answer, Batcher, Overloaded
from .metrics import Metrics
from .settings import Settings

RETRY_AFTER_S = "1"
INLINE_PIXELS = 1 << 16  # an image declaring at most this many pixels is decoded on the event loop


class _BadRequest(Exception):
    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status, self.kind = status, kind


class Server:
    """The model, its batcher and metrics behind an aiohttp application (the model loads in the background)."""

    def __init__(self, folder: Path, settings: Settings, threshold: float | None = None,
                 policy: str | None = None) -> None:
        self.folder, self.settings = folder, settings
        self.runtime: Runtime | None = None
        self.batcher: Batcher | None = None
        self.metrics: Metrics | None = None
        self._load = lambda: load(folder, threshold, policy, settings.threads)
        self._decoders = ThreadPoolExecutor(2, thread_name_prefix="shallowdeep-decode")
        self.accepted = self.answered = 0  # /predict requests taken, and answered (any status)
        self.app = web.Application(client_max_size=settings.max_bytes)
        self.app.add_routes([web.post("/predict", self.predict), web.get("/health", self.health),
                             web.get("/metrics", self.render_metrics)])

    def start_loading(self) -> asyncio.Future:
        """Load the model on a worker thread; ``/health`` says ready once it is loaded."""
        return asyncio.get_running_loop().run_in_executor(None, self._ready)

    def _ready(self) -> None:
        runtime = self._load()
        m = runtime.manifest
        metrics = Metrics(m.exit_names, m.exit_flops, m.backbone_flops)
        s = self.settings
        batcher = Batcher(runtime, s.max_batch, s.max_wait_ms / 1e3, s.max_queue,
                          on_dropped=lambda n: metrics.error("client_gone", n))
        runtime.fused(runtime.preprocess(np.zeros((1, *m.input_shape), np.uint8)))  # sessions made before traffic
        runtime.stream([runtime.preprocess(np.zeros((2, *m.input_shape), np.uint8))])
        self.runtime, self.metrics, self.batcher = runtime, metrics, batcher

    def stop(self) -> None:
        if self.batcher is not None:
            self.batcher.stop()
        self._decoders.shutdown()

    # -- handlers ------------------------------------------------------------------------------------------------
    async def health(self, request: web.Request) -> web.Response:
        if self.runtime is None:
            return web.json_response({"status": "loading"}, status=503, headers={"Retry-After": RETRY_AFTER_S})
        return web.json_response({"status": "ready", "export": str(self.folder),
                                  "policy": self.runtime.policy.name, "threshold": self.runtime.policy.threshold})

    async def render_metrics(self, request: web.Request) -> web.Response:
        if self.metrics is None:
            return web.Response(text="shallowdeep_ready 0\n", content_type="text/plain")
        text = self.metrics.render(self.batcher.waiting, ready=True)
        return web.Response(text=text, content_type="text/plain", charset="utf-8",
                            headers={"X-Content-Type-Options": "nosniff"})

    async def predict(self, request: web.Request) -> web.Response:
        start = time.monotonic()
        self.accepted += 1
        status, kind, body, headers = 200, None, None, {}
        try:
            if self.runtime is None:
                raise _BadRequest(503, "loading", "the model is still loading")
            named = await self._read_images(request)
            try:  # small images on the event loop: a thread hop costs more than decoding a thumbnail
                images = self._decode(named, min(INLINE_PIXELS, self.settings.max_pixels))
            except TooManyPixels:
                images = await asyncio.get_running_loop().run_in_executor(self._decoders, self._decode, named,
                                                                          self.settings.max_pixels)
            answers = await self._answers(self.runtime.preprocess(images), _gone(request))
            body = {"predictions": [self._answer(name, a) for (name, _), a in zip(named, answers)]}
        except _BadRequest as exc:
            status, kind, body = exc.status, exc.kind, {"error": str(exc)}
            if status == 503:
                headers["Retry-After"] = RETRY_AFTER_S
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - one line to the client, the server goes on
            status, kind, body = 500, "internal", {"error": first_line(exc)}
        if self.metrics is not None:
            self.metrics.request(status, time.monotonic() - start, kind)
            if status == 200:
                self.metrics.answered([p["exit"] for p in body["predictions"]])
        self.answered += 1
        return web.json_response(body, status=status, headers=headers)

    @property
    def in_flight(self) -> int:
        """/predict requests taken and not yet answered."""
        return self.accepted - self.answered

    async def _answers(self, images: np.ndarray, gone: Callable[[], bool]) -> list[Answer]:
        """Each normalised image's answer: a lone image in an idle server on the event loop's thread (no hop to
        the batcher's and back), anything else through the batcher."""
        if len(images) == 1 and self.in_flight == 1:
            await asyncio.sleep(0)  # requests that arrived with this one start first, so that a busy server batches
            if self.in_flight == 1 and (answer := self.batcher.answer_alone(images[0])) is not None:
                return [answer]
        try:
            futures = self.batcher.submit(images, gone)
        except Overloaded as exc:
            raise _BadRequest(503, "overloaded", f"the server is busy ({exc}); retry later") from None
        return list(await asyncio.gather(*futures))

    async def _read_images(self, request: web.Request) -> list[tuple[str | None, bytes]]:
        """The request's image files with their names: the body, or each part of a multipart form."""
        limit = self.settings.max_bytes
        if request.content_length is not None and request.content_length > limit:
            raise _BadRequest(413, "too_large", f"the request has {request.content_length} bytes; the limit is {limit}")
        if request.content_type.startswith("multipart/"):
            files, total = [], 0
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                data = bytearray()
                while chunk := await part.read_chunk(1 << 16):
                    total += len(chunk)
                    if total > limit:
                        raise _BadRequest(413, "too_large", f"the request has more than {limit} bytes")
                    data += chunk
                files.append((part.filename or part.name, bytes(data)))
        else:
            data = bytearray()
            async for chunk in request.content.iter_chunked(1 << 16):
                data += chunk
                if len(data) > limit:
                    raise _BadRequest(413, "too_large", f"the request has more than {limit} bytes")
            files = [(None, bytes(data))]
        if not files:
            raise _BadRequest(400, "no_image", "the request holds no image")
        return files

    def _decode(self, named: list[tuple[str | None, bytes]], max_pixels: int) -> np.ndarray:
        """The images as uint8 (N, C, H, W), read as predict reads files; :class:`TooManyPixels` when one declares
        more than ``max_pixels`` pixels while the server allows more, else a 400 naming the first bad one."""
        channels, _, side = self.runtime.manifest.input_shape
        try:
            return np.stack([decode_image_bytes(data, side, channels, name or "the request's image", max_pixels)
                             for name, data in named])
        except UserError as exc:
            if isinstance(exc, TooManyPixels) and max_pixels < self.settings.max_pixels:
                raise
            raise _BadRequest(400, "bad_image", str(exc)) from None

    def _answer(self, name: str | None, answer: Answer) -> dict[str, Any]:
        m = self.runtime.manifest
        index = int(np.argmax(answer.logits))
        return {"name": name, "class": m.classes[index], "class_index": index, "exit": answer.exit,
                "exit_name": m.exit_names[answer.exit], "confidence": answer.confidence,
                "flops": m.exit_flops[answer.exit]}


def _gone(request: web.Request) -> Callable[[], bool]:
    """Whether the client of ``request`` has disconnected."""
    transport = request.transport
    return lambda: transport is None or transport.is_closing()


async def serve(folder: Path, settings: Settings, host: str, port: int, threshold: float | None = None,
                policy: str | None = None, on_listening: Callable[[str], None] = print) -> tuple[int, int]:
    """Serve the export ``folder`` on ``host``:``port`` (0: a free port) until SIGTERM or SIGINT; then refuse new
    connections, answer the requests in flight and return how many /predict requests were accepted and
    answered. ``on_listening`` gets the address once bound."""
    server = Server(folder, settings, threshold, policy)
    runner = web.AppRunner(server.app, handle_signals=False, shutdown_timeout=60, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        bound_host, bound_port = runner.addresses[0][:2]
        loading = server.start_loading()
        on_listening(f"http://{bound_host}:{bound_port}")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        done, _ = await asyncio.wait([asyncio.ensure_future(stop.wait()), loading],
                                     return_when=asyncio.FIRST_COMPLETED)
        if loading in done and loading.exception() is not None:
            raise loading.exception()
        await stop.wait()
    finally:
        await runner.cleanup()  # stops listening, waits for the handlers in flight
        server.stop()
    return server.accepted, server.answered
