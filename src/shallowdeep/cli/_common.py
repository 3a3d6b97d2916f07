"""Helpers shared by the commands: devices, progress bars, tables."""

from __future__ import annotations

import os
import sys
from typing import Iterable, Iterator, Sequence

import torch

from ..errors import UserError


def add_device_argument(parser) -> None:
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (cuda when available)")


def resolve_device(name: str) -> torch.device:
    """The torch device for ``--device``; a one-line error when CUDA is asked for but absent."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name} asked for, but PyTorch sees no CUDA device")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise UserError(f"unknown --device '{name}'") from exc


def show_progress() -> bool:
    """Progress bars on a terminal only, never in CI or logs."""
    return sys.stderr.isatty() and not os.environ.get("CI")


def progress_bar(iterable: Iterator, total: int, desc: str) -> Iterator:
    """A tqdm bar over ``iterable`` when on a terminal, else ``iterable`` unchanged."""
    if not show_progress():
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A plain aligned text table."""
    cells = [list(map(str, headers))] + [[f"{v:.4f}" if isinstance(v, float) else str(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
