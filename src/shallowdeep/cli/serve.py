"""Serve an export folder over HTTP (aiohttp), with early exit and dynamic batching, without PyTorch.

POST /predict takes one image (the file's bytes as the body) or several (multipart form parts) and answers JSON:
per image its class name and index, exit index and name, confidence and FLOPs. Requests that arrive while a
batch computes are batched (up to --max-batch images); images that go on past an exit wait up to --max-wait-ms
at the next stage for company, so that stages run on full batches under load; an idle server answers a lone
image at once. GET /health answers 200 once the model is loaded (503 before), GET /metrics in Prometheus' text
format. A full queue (--max-queue images) answers 503 with Retry-After, a body over --max-bytes 413, an image
that cannot be read or is larger than --max-pixels (judged from its header) 400. SIGTERM or Ctrl-C stops
accepting, answers the requests in flight, and exits 0. It listens on 127.0.0.1 unless --host says otherwise.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..choices import POLICY_NAMES
from ._common import int_range, non_negative_float, positive_int

NAME = "serve"
ORDER = 28
HELP = "serve an export folder over HTTP with early exit and dynamic batching"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..serve.settings import Settings

    d = Settings()
    p.add_argument("export", type=Path, help="export folder (shallowdeep export)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int_range(0, 65535), default=8000, help="port to listen on (0: a free one)")
    p.add_argument("--max-batch", type=positive_int, default=d.max_batch, help="images per stage run")
    p.add_argument("--max-wait-ms", type=non_negative_float, default=d.max_wait_ms,
                   help="longest an image waits for others to share a stage's batch, under load")
    p.add_argument("--max-queue", type=positive_int, default=d.max_queue,
                   help="images accepted and not yet answered before requests get 503")
    p.add_argument("--max-bytes", type=positive_int, default=d.max_bytes, help="largest request body (413 above)")
    p.add_argument("--max-pixels", type=positive_int, default=d.max_pixels,
                   help="largest image, in pixels, read from its header before decoding (400 above)")
    p.add_argument("--threshold", type=non_negative_float, help="apply this threshold instead of the export's")
    p.add_argument("--policy", choices=POLICY_NAMES, help="policy of --threshold (default: the export's)")
    p.add_argument("--threads", type=positive_int, help="onnxruntime's threads (default: one per core)")


def run(args: argparse.Namespace) -> int:
    import asyncio

    from ..errors import UserError
    from ..serve.settings import Settings

    try:
        from ..runtime import read_manifest
        from ..serve.app import serve
    except ImportError as exc:
        raise UserError(f"serving needs the deploy extra ({exc.name} is missing): "
                        "pip install 'shallowdeep[deploy]'") from None

    if args.policy is not None and args.threshold is None:
        raise UserError("--policy goes with --threshold")
    read_manifest(args.export)  # a one-line error before listening
    settings = Settings(args.max_batch, args.max_wait_ms, args.max_queue, args.max_bytes, args.max_pixels, args.threads)
    accepted, answered = asyncio.run(serve(
        args.export, settings, args.host, args.port, args.threshold, args.policy,
        lambda url: print(f"serving {args.export} on {url} (POST /predict, GET /health, GET /metrics; Ctrl-C stops)",
                          flush=True)))
    every = "every accepted request was answered" if accepted == answered else f"{accepted - answered} unanswered"
    print(f"stopped: {answered} requests answered of {accepted} accepted ({every})", flush=True)
    return 0 if accepted == answered else 1
