"""The server's counters, written in Prometheus' text format for ``GET /metrics``."""

from __future__ import annotations

import threading
from collections import Counter, deque
from typing import Sequence

import numpy as np

QUANTILES = (0.5, 0.9, 0.99, 0.999)
LATENCY_WINDOW = 100_000  # the latest request latencies the quantiles are computed over


class Metrics:
    """Requests by status, errors by kind, images by exit, latencies and FLOPs (thread-safe)."""

    def __init__(self, exit_names: Sequence[str], exit_flops: Sequence[int], backbone_flops: int) -> None:
        self.exit_names, self.exit_flops, self.backbone_flops = list(exit_names), list(exit_flops), backbone_flops
        self._lock = threading.Lock()
        self.requests: Counter[int] = Counter()
        self.errors: Counter[str] = Counter()
        self.exits: Counter[int] = Counter()
        self.latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self.latency_sum, self.latency_count = 0.0, 0

    def request(self, status: int, seconds: float, error: str | None = None) -> None:
        with self._lock:
            self.requests[status] += 1
            if error:
                self.errors[error] += 1
            self.latencies.append(seconds)
            self.latency_sum += seconds
            self.latency_count += 1

    def error(self, kind: str, count: int = 1) -> None:
        with self._lock:
            self.errors[kind] += count

    def answered(self, exits: Sequence[int]) -> None:
        with self._lock:
            self.exits.update(exits)

    def render(self, queued: int, ready: bool) -> str:
        """Every metric in Prometheus' text exposition format."""
        with self._lock:
            images = sum(self.exits.values())
            flops = sum(self.exit_flops[e] * n for e, n in self.exits.items())
            latencies = np.asarray(self.latencies)
            lines = [
                *_family("shallowdeep_ready", "gauge", "1 once the model is loaded", [("", int(ready))]),
                *_family("shallowdeep_requests_total", "counter", "requests to /predict by HTTP status",
                         [(f'code="{code}"', n) for code, n in sorted(self.requests.items())]),
                *_family("shallowdeep_errors_total", "counter", "failed or dropped requests by kind",
                         [(f'kind="{kind}"', n) for kind, n in sorted(self.errors.items())]),
                *_family("shallowdeep_images_total", "counter", "images answered", [("", images)]),
                *_family("shallowdeep_exit_images_total", "counter", "images answered by each exit",
                         [(f'exit="{_escape(name)}",index="{i}"', self.exits.get(i, 0))
                          for i, name in enumerate(self.exit_names)]),
                *_family("shallowdeep_request_latency_seconds", "summary",
                         f"time to answer a /predict request (quantiles over the latest {LATENCY_WINDOW})",
                         [(f'quantile="{q}"', float(np.quantile(latencies, q)) if latencies.size else float("nan"))
                          for q in QUANTILES]),
                f"shallowdeep_request_latency_seconds_sum {self.latency_sum:.6f}",
                f"shallowdeep_request_latency_seconds_count {self.latency_count}",
                *_family("shallowdeep_flops_per_image", "gauge", "average FLOPs an answered image cost",
                         [("", flops / images if images else 0.0)]),
                *_family("shallowdeep_flops_saved_ratio", "gauge",
                         "share of the backbone's FLOPs saved over the answered images",
                         [("", 1 - flops / (images * self.backbone_flops) if images else 0.0)]),
                *_family("shallowdeep_queued_images", "gauge", "images accepted and not yet answered", [("", queued)]),
            ]
        return "\n".join(lines) + "\n"


def _family(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> list[str]:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    return lines + [f"{name}{{{labels}}} {_number(value)}" if labels else f"{name} {_number(value)}"
                    for labels, value in samples]


def _number(value: float) -> str:
    if isinstance(value, float) and np.isnan(value):
        return "NaN"
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
