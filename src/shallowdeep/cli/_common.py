"""Helpers shared by the commands: option types, devices, progress bars, tables.

Light at import (no torch): the parser of every command is built from these. Every numeric option
has a type function from here, so a value out of range is argparse's one-line error (exit code 2)
before any work starts.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from argparse import ArgumentTypeError
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence

from ..choices import (ARCHS, CACHE_VIEWS, DATASET, DATASETS, HOLDOUT_FRACTION, IC_DESIGNS, IC_WIDTH, LIBRARIES,
                       NORMALIZATION, NORMALIZATIONS, SEED)
from ..errors import UserError

if TYPE_CHECKING:
    import torch

    from ..data import Splits
    from ..model_spec import ModelSpec
    from ..run import Run
    from ..train.data_settings import DataSettings

SEED_MAX = 2**32 - 1  # 32 bits: seed * 1_000_003 + epoch, the per-epoch generators' seed, stays in torch's 64


def int_range(lo: int, hi: int | None = None) -> Callable[[str], int]:
    """A type function for integers from ``lo`` to ``hi``, both included (no upper end when None)."""
    rule = f"an integer >= {lo}" if hi is None else f"an integer from {lo} to {hi}"
    return _checked(int, rule, lambda v: lo <= v and (hi is None or v <= hi))


def float_range(lo: float, hi: float = math.inf, *, lo_open: bool = False,
                hi_open: bool = False) -> Callable[[str], float]:
    """A type function for finite numbers from ``lo`` to ``hi`` (NaN and infinities never pass); an end
    is included unless it is open."""
    if math.isinf(hi):
        rule = f"a finite number {'>' if lo_open else '>='} {lo:g}"
    else:
        rule = f"a number in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    return _checked(float, rule, lambda v: math.isfinite(v) and (lo < v if lo_open else lo <= v)
                    and (v < hi if hi_open else v <= hi))


def _checked(kind: type, rule: str, ok: Callable[[float], bool]) -> Callable[[str], int | float]:
    """A type function reading ``kind`` and refusing, naming ``rule``, what is not ``ok``."""
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise ArgumentTypeError(f"must be {rule}, got '{text}'")
        return value

    return parse


positive_int = int_range(1)
random_seed = int_range(0, SEED_MAX)
positive_float = float_range(0, lo_open=True)
non_negative_float = float_range(0)
fraction = float_range(0, 1, hi_open=True)  # [0, 1): a share that may be zero but never everything
open_fraction = float_range(0, 1, lo_open=True, hi_open=True)
channel_count = _checked(int, "1 (grey) or 3 (RGB)", lambda v: v in (1, 3))


def increasing_fractions(text: str) -> tuple[float, ...]:
    """A type function for comma-separated numbers in (0, 1), strictly increasing."""
    try:
        values = tuple(open_fraction(v) for v in text.split(","))
    except ArgumentTypeError:
        values = ()
    if not values or any(a >= b for a, b in zip(values, values[1:])):
        raise ArgumentTypeError(f"must be comma-separated increasing numbers in (0, 1), got '{text}'")
    return values


def positive_ints(text: str) -> list[int]:
    """A type function for comma-separated integers >= 1 (an empty text: none)."""
    try:
        return [positive_int(v) for v in text.split(",") if v.strip()]
    except ArgumentTypeError:
        raise ArgumentTypeError(f"must be comma-separated integers >= 1, got '{text}'") from None


def device_name(text: str) -> str:
    """A type function for ``--device``: auto, cpu, cuda, cuda:N or mps."""
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", text):
        raise ArgumentTypeError(f"must be auto, cpu, cuda, cuda:N or mps, got '{text}'")
    return text


def add_device_argument(parser) -> None:
    parser.add_argument("--device", type=device_name, default="auto",
                        help="cpu, cuda, cuda:N, mps, or auto (cuda when available)")
    parser.add_argument("--threads", type=positive_int,
                        help="CPU threads PyTorch uses (default: one per core; on a busy machine 1 can be much faster)")


def resolve_device(name: str, threads: int | None = None) -> torch.device:
    """The torch device for ``--device`` (a :func:`device_name`), after setting ``--threads``; a one-line
    error when the device is absent."""
    import torch

    if threads is not None:
        torch.set_num_threads(cap_threads(threads))

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and (device.index or 0) >= (count := torch.cuda.device_count()):
        seen = f"only {count} CUDA device(s)" if count else "no CUDA device"
        raise UserError(f"--device {name} asked for, but PyTorch sees {seen}")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {name} asked for, but PyTorch sees no MPS device")
    return device


def cap_threads(threads: int) -> int:
    """``--threads``, at most one per core this process may use (a warning says when it asked for more)."""
    import warnings

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if threads > cores:
        warnings.warn(f"--threads {threads} is more than the {cores} cores this process may use; using {cores}")
        return cores
    return threads


def require_ics(run_: Run, command: str) -> None:
    """A one-line error when ``run_`` is a plain CNN (no internal classifier), saying how to add them."""
    if run_.config["model"].get("exits") == []:
        data = run_.config.get("data", {})
        where = f" --data-dir {data['data_dir']}" if data.get("data_dir") else ""
        raise UserError(f"{command} needs internal classifiers and {run_.path} is a plain CNN: train them on it with "
                        f"shallowdeep train --mode ic-only --from {run_.path} --dataset {data.get('name')}{where} "
                        f"--out NEW_RUN, then run shallowdeep {command} NEW_RUN")


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


def percentages(shares: Sequence[float], decimals: int = 1) -> list[str]:
    """``shares`` of one whole as percentages with ``decimals`` digits that add up as the shares do (largest
    remainder rounding: printed exit shares add up to 100)."""
    unit = 10**decimals
    scaled = [100 * unit * float(s) for s in shares]
    units = [math.floor(x) for x in scaled]
    for i in sorted(range(len(units)), key=lambda i: units[i] - scaled[i])[: round(sum(scaled)) - sum(units)]:
        units[i] += 1
    return [f"{u / unit:.{decimals}f}" for u in units]


def add_image_arguments(group) -> None:
    """``--image-size`` and ``--channels``: how an image folder's files are read (recorded in the run)."""
    group.add_argument("--image-size", type=int_range(1, 4096), metavar="N",
                       help="imagefolder: resize every image to NxN (recorded in the run, applied again when its "
                            "data is read)")
    group.add_argument("--channels", type=channel_count, metavar="{1,3}",
                       help="imagefolder: read every image as grey (1) or RGB (3); default: the folder's own, grey "
                            "when every image is, else RGB with a warning when some are grey (recorded in the run)")


def image_options(args) -> dict:
    """The data options :func:`add_image_arguments` gives, as the run records them."""
    return {**({"image_size": args.image_size} if args.image_size else {}), "channels": args.channels}


def add_cache_argument(group) -> None:
    """``--cache-dir``: where a command that reads a data set keeps its decoded images."""
    group.add_argument("--cache-dir", type=Path, metavar="DIR",
                       help="folder of the decoded-image cache (default: DATA_DIR/.shallowdeep-cache, or "
                            "~/.cache/shallowdeep where that cannot be written)")


def add_data_arguments(parser, data_dir_help: str, holdout: Callable[[str], float] = fraction,
                       holdout_help: str = "share of the training set held out",
                       normalization_help: str = "input mean/std: the paper's per data set, ImageNet's, or the "
                                                 "training split's own"):
    """The data options of a command that trains (defaults: :class:`shallowdeep.train.DataSettings`'s, from
    :mod:`shallowdeep.choices`); returns their group, for a command's own data options."""
    g = parser.add_argument_group("data")
    g.add_argument("--dataset", choices=DATASETS, default=DATASET)
    g.add_argument("--data-dir", type=Path, help=data_dir_help)
    add_cache_argument(g)
    g.add_argument("--holdout-fraction", type=holdout, default=HOLDOUT_FRACTION, help=holdout_help)
    g.add_argument("--limit", type=positive_int, help="train on the first N training images only")
    add_image_arguments(g)
    g.add_argument("--normalization", choices=NORMALIZATIONS, default=NORMALIZATION, help=normalization_help)
    return g


def data_settings(args, download: bool | None = None) -> DataSettings:
    """The :class:`~shallowdeep.train.DataSettings` the options of :func:`add_data_arguments` give."""
    from ..train.data_settings import DataSettings

    return DataSettings(args.dataset, args.data_dir, args.holdout_fraction, args.seed, args.limit, download,
                        args.normalization, args.image_size, args.channels, args.cache_dir)


def add_recipe_arguments(group) -> None:
    """The recipe options that every training command takes (unset: the recipe's own), and ``--seed``."""
    group.add_argument("--epochs", type=positive_int)
    group.add_argument("--lr", type=positive_float)
    group.add_argument("--batch-size", type=positive_int)
    group.add_argument("--weight-decay", type=non_negative_float)


def add_seed_argument(group, help: str | None = None) -> None:
    group.add_argument("--seed", type=random_seed, default=SEED, help=help)


def add_cache_views_argument(group) -> None:
    group.add_argument("--cache-views", type=positive_int, default=CACHE_VIEWS,
                       help="ic-only: augmented views of the training set cached")


def add_run_data_arguments(parser) -> None:
    """``--data-dir`` and ``--cache-dir`` of a command that reads a run's data (see :func:`run_data`)."""
    g = parser.add_argument_group("data")
    g.add_argument("--data-dir", type=Path, metavar="DIR",
                   help="where the run's data set is now, if it moved (default: where it was trained); it must be the "
                        "same data: each split is checked against the run's record")
    add_cache_argument(g)


def run_data(run_: Run, args) -> Splits:
    """The data set ``run_`` was trained on, from ``--data-dir`` and cached in ``--cache-dir`` when given."""
    from ..outputs import load_run_data

    return load_run_data(run_, args.data_dir, args.cache_dir)


def add_model_arguments(parser, from_help: str | None) -> None:
    """The options that say which network to build: a built-in or user backbone, weights (``--from``, unless
    ``from_help`` is None), exits."""
    g = parser.add_argument_group("model")
    g.add_argument("--arch", choices=ARCHS, help="built-in backbone")
    g.add_argument("--backbone", metavar="FILE.py:FUNCTION|LIBRARY:NAME",
                   help="your own backbone (a function returning an nn.Module), or torchvision:NAME / timm:NAME")
    g.add_argument("--model-kwargs", type=json_object, default={}, metavar="JSON",
                   help="keyword arguments of a torchvision or timm model, e.g. '{\"drop_path_rate\": 0.1}'")
    if from_help is not None:
        g.add_argument("--from", "--weights", dest="pretrained", metavar="RUN_OR_WEIGHTS", help=from_help)
    g.add_argument("--exits", help="comma-separated module names whose outputs feed the ICs (default: by FLOPs)")
    g.add_argument("--fractions", type=increasing_fractions, default="0.15,0.3,0.45,0.6,0.75,0.9",
                   help="fractions of the FLOPs where ICs go when --exits is not given")
    g.add_argument("--ic", choices=IC_DESIGNS, default="paper",
                   help="internal classifier design: the SDN paper's (pooling + linear), conv (a small convolutional "
                        "head), or ztw (conv heads with Zero Time Waste's cascading and geometric ensemble)")
    g.add_argument("--ic-width", type=int_range(1, 4096), default=IC_WIDTH, help="channels of the conv and ztw heads")
    g.add_argument("--leaf-module", dest="leaf_modules", action="append", default=[], metavar="CLASS",
                   help="trace every module of this class as one call, for code torch.fx cannot trace (repeatable): "
                        "its class name (Gate) or full import path (mypkg.blocks.Gate); no exit goes inside it; "
                        "recorded in the run")


def model_spec(args) -> ModelSpec:
    """The network the options of :func:`add_model_arguments` describe (classes and input shape come
    later, from the data)."""
    from ..heads import ICDesign
    from ..model_spec import ModelSpec

    exits = tuple(e.strip() for e in args.exits.split(",") if e.strip()) if args.exits is not None else None
    if exits == ():
        raise UserError(f"--exits '{args.exits}' names no module; give comma-separated names of the points where "
                        "the ICs go (shallowdeep exits lists them)")
    library = args.backbone if args.backbone and args.backbone.partition(":")[0] in LIBRARIES else None
    if args.model_kwargs and not library:
        raise UserError("--model-kwargs applies to torchvision:NAME and timm:NAME backbones")
    return ModelSpec(arch=args.arch, factory=None if library else args.backbone, library=library,
                     model_kwargs=args.model_kwargs, exits=exits, fractions=args.fractions,
                     ic=ICDesign(args.ic, args.ic_width), leaf_modules=tuple(args.leaf_modules))


def json_object(text: str) -> dict:
    """A type function for a JSON object (keyword arguments)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ArgumentTypeError(f"must be a JSON object such as '{{\"drop_path_rate\": 0.1}}' ({exc.msg}), "
                                f"got '{text}'") from None
    if not isinstance(value, dict):
        raise ArgumentTypeError(f"must be a JSON object, got '{text}'")
    return value
