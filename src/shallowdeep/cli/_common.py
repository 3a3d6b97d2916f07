"""Helpers shared by the commands: devices, progress bars, tables.

Light at import (no torch): the parser of every command is built from these.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Iterable, Iterator, Sequence

from ..choices import ARCHS, IC_DESIGNS, IC_WIDTH
from ..errors import UserError

if TYPE_CHECKING:
    import torch

    from ..model_spec import ModelSpec


def add_device_argument(parser) -> None:
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (cuda when available)")


def resolve_device(name: str) -> torch.device:
    """The torch device for ``--device``; a one-line error when CUDA is asked for but absent."""
    import torch

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
    g = parser.add_argument_group("model")
    g.add_argument("--arch", choices=ARCHS, help="built-in backbone")
    g.add_argument("--backbone", metavar="FILE.py:FUNCTION", help="your own backbone: a function returning an nn.Module")
    g.add_argument("--from", "--weights", dest="pretrained", metavar="RUN_OR_WEIGHTS", help=from_help)
    g.add_argument("--exits", help="comma-separated module names whose outputs feed the ICs (default: by FLOPs)")
    g.add_argument("--fractions", default="0.15,0.3,0.45,0.6,0.75,0.9",
                   help="fractions of the FLOPs where ICs go when --exits is not given")
    g.add_argument("--ic", choices=IC_DESIGNS, default="paper",
                   help="internal classifier design: the SDN paper's (pooling + linear), conv (a small convolutional "
                        "head), or ztw (conv heads with Zero Time Waste's cascading and geometric ensemble)")
    g.add_argument("--ic-width", type=int, default=IC_WIDTH, help="channels of the conv and ztw heads")


def model_spec(args) -> ModelSpec:
    """The network the options of :func:`add_model_arguments` describe (classes and input shape come
    later, from the data)."""
    from ..heads import ICDesign
    from ..model_spec import ModelSpec

    try:
        fractions = tuple(float(f) for f in args.fractions.split(","))
    except ValueError as exc:
        raise UserError(f"--fractions must be comma-separated numbers, got '{args.fractions}'") from exc
    exits = tuple(e.strip() for e in args.exits.split(",") if e.strip()) if args.exits else None
    return ModelSpec(arch=args.arch, factory=args.backbone, exits=exits, fractions=fractions,
                     ic=ICDesign(args.ic, args.ic_width))
