"""List the points of a backbone where an internal classifier can go, with what an IC there reads (a CNN's
C x H x W map, or a transformer's tokens x dim, a channels-last map's H*W positions as tokens) and the
share of the backbone's FLOPs spent up to it, and mark those the SDN would use (placed by
FLOPs at --fractions, or named with --exits), and what the heads of each --ic design at those exits add to
the backbone's cost for this input shape. Nothing is trained or written; choose --exits from this list for
`shallowdeep train`."""

from __future__ import annotations

import argparse

from ._common import add_model_arguments, cap_threads, int_range, model_spec, positive_int, positive_ints, table

NAME = "exits"
ORDER = 15
HELP = "list where a backbone can take exits, with their cost and shape"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p, None)  # the cut points do not depend on the weights
    p.add_argument("--input-shape", type=positive_ints, default="3,32,32", metavar="C,H,W",
                   help="shape of one input image")
    p.add_argument("--classes", type=int_range(2), default=10, help="number of classes")
    p.add_argument("--threads", type=positive_int,
                   help="CPU threads PyTorch uses (default: one per core; on a busy machine 1 can be much faster)")


def run(args: argparse.Namespace) -> int:
    import warnings

    import torch

    from ..build import build_backbone, build_sdn
    from ..choices import IC_DESIGNS
    from ..errors import UserError
    from ..heads import ICDesign
    from ..surgery import cut_points, heads_flops

    if args.threads is not None:
        torch.set_num_threads(cap_threads(args.threads))
    if len(args.input_shape) != 3:
        raise UserError(f"--input-shape must be C,H,W, got {','.join(map(str, args.input_shape))}")
    spec = model_spec(args).with_data(args.classes, tuple(args.input_shape))
    if not spec.has_backbone:
        raise UserError("say which backbone: --arch NAME or --backbone FILE.py:FUNCTION or LIBRARY:NAME")
    with warnings.catch_warnings(record=True) as notes:
        warnings.simplefilter("always")
        net = build_sdn(spec)
    chosen = set(net.exit_names)
    points = cut_points(build_backbone(spec), spec.input_shape, spec.tracing)
    rows = [(p.name, "x".join(map(str, p.shape)), p.layout, f"{100 * p.flops / net.backbone_flops:.1f} %",
             "IC" if p.name in chosen else "") for p in points]
    print(table(["cut point", "shape", "layout", "FLOPs so far", "exit"], rows))
    for note in notes:
        print(f"note: {note.message}")
    print(f"{len(points)} cut points; {len(chosen)} exits at {','.join(net.exit_names)} "
          f"(--exits takes these names); backbone: {net.backbone_flops / 1e6:.1f} MFLOPs per image")
    if net.exit_names:
        shapes = [next(p.shape for p in points if p.name == name) for name in net.exit_names]
        extra = {design: heads_flops(shapes, args.classes, ICDesign(design, args.ic_width)) for design in IC_DESIGNS}
        costs = [f"{design} {100 * flops / net.backbone_flops:.1f} %" for design, flops in extra.items()]
        print(f"the {len(shapes)} heads add to the backbone's cost at {'x'.join(map(str, spec.input_shape))}, "
              f"by --ic design: {', '.join(costs)}")
    return 0
