"""What the server accepts and how it batches (no imports: the command line's defaults come from here)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    """Limits and batching of ``shallowdeep serve`` (see its ``--help``)."""

    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_queue: int = 1024
    max_bytes: int = 8 << 20
    max_pixels: int = 1 << 24
    threads: int | None = None
