"""Helpers shared by the commands: devices, progress bars, tables."""

from __future__ import annotations

import os
import sys
from typing import Iterable, Iterator, Sequence

import torch

from ..errors import UserError
from ..heads import IC_DESIGNS, ICDesign


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


def add_model_arguments(parser, from_help: str) -> None:
    """The options that say which network to build: a built-in or user backbone, weights, exits."""
    from .. import models

    g = parser.add_argument_group("model")
    g.add_argument("--arch", choices=models.available(), help="built-in backbone")
    g.add_argument("--backbone", metavar="FILE.py:FUNCTION", help="your own backbone: a function returning an nn.Module")
    g.add_argument("--from", "--weights", dest="pretrained", metavar="RUN_OR_WEIGHTS", help=from_help)
    g.add_argument("--exits", help="comma-separated module names whose outputs feed the ICs (default: by FLOPs)")
    g.add_argument("--fractions", default="0.15,0.3,0.45,0.6,0.75,0.9",
                   help="fractions of the FLOPs where ICs go when --exits is not given")
    g.add_argument("--ic", choices=IC_DESIGNS, default="paper",
                   help="internal classifier design: the SDN paper's (pooling + linear), conv (a small convolutional "
                        "head), or ztw (conv heads with Zero Time Waste's cascading and geometric ensemble)")
    g.add_argument("--ic-width", type=int, default=ICDesign.width, help="channels of the conv and ztw heads")


def model_spec(args) -> dict:
    """The model spec (see shallowdeep.build) that the options of :func:`add_model_arguments` describe."""
    if args.arch and args.backbone:
        raise UserError("give either --arch or --backbone, not both")
    model: dict = {"exits": [e.strip() for e in args.exits.split(",") if e.strip()] if args.exits else None,
                   "ic": ICDesign(args.ic, args.ic_width).to_dict()}
    if args.arch:
        model["arch"] = args.arch
    if args.backbone:
        model["factory"] = args.backbone
    try:
        model["fractions"] = [float(f) for f in args.fractions.split(",")]
    except ValueError as exc:
        raise UserError(f"--fractions must be comma-separated numbers, got '{args.fractions}'") from exc
    return model
