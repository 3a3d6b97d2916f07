"""List the points of a backbone where an internal classifier can go, with what an IC there reads (a CNN's
C x H x W map, or a transformer's tokens x dim, a channels-last map's H*W positions as tokens) and the
share of the backbone's FLOPs spent up to it, and mark those the SDN would use (placed by
FLOPs at --fractions, or named with --exits). Nothing is trained or written; choose --exits from
this list for `shallowdeep train`."""

from __future__ import annotations

import argparse

from ._common import add_model_arguments, int_range, model_spec, positive_ints, table

NAME = "exits"
ORDER = 15
HELP = "list where a backbone can take exits, with their cost and shape"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p, None)  # the cut points do not depend on the weights
    p.add_argument("--input-shape", type=positive_ints, default="3,32,32", metavar="C,H,W",
                   help="shape of one input image")
    p.add_argument("--classes", type=int_range(2), default=10, help="number of classes")


def run(args: argparse.Namespace) -> int:
    import warnings

    from ..build import build_backbone, build_sdn
    from ..errors import UserError
    from ..surgery import cut_points

    if len(args.input_shape) != 3:
        raise UserError(f"--input-shape must be C,H,W, got {','.join(map(str, args.input_shape))}")
    spec = model_spec(args).with_data(args.classes, tuple(args.input_shape))
    if not spec.has_backbone:
        raise UserError("say which backbone: --arch NAME or --backbone FILE.py:FUNCTION or LIBRARY:NAME")
    with warnings.catch_warnings(record=True) as notes:
        warnings.simplefilter("always")
        net = build_sdn(spec)
    chosen = set(net.exit_names)
    points = cut_points(build_backbone(spec), spec.input_shape)
    rows = [(p.name, "x".join(map(str, p.shape)), p.layout, f"{100 * p.flops / net.backbone_flops:.1f} %",
             "IC" if p.name in chosen else "") for p in points]
    print(table(["cut point", "shape", "layout", "FLOPs so far", "exit"], rows))
    for note in notes:
        print(f"note: {note.message}")
    print(f"{len(points)} cut points; {len(chosen)} exits at {','.join(net.exit_names)} "
          f"(--exits takes these names); backbone: {net.backbone_flops / 1e6:.1f} MFLOPs per image")
    return 0
