"""Export a run for deployment: one ONNX graph per stage (backbone segment and exit head), a fused graph that does
the whole early exit of one image in one call, and DIR/manifest.json (input shape and normalisation, classes,
exits and their FLOPs, the exit policy with its threshold and where it came from).

The policy and threshold are those of the run's latest early-exit result, or of --early-exit KEY (shallowdeep
early-exit prints each result's key), or --threshold (with --policy). Every stage is checked against PyTorch
in onnxruntime before the folder is written. DIR must be new, empty or an earlier export (which is replaced).
Run the export with `shallowdeep predict DIR IMAGES...` or `shallowdeep.runtime.load(DIR)`, which need
onnxruntime and numpy but not PyTorch (pip install 'shallowdeep[deploy]').
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..choices import POLICY_NAMES, PRECISIONS
from ._common import non_negative_float, positive_int

NAME = "export"
ORDER = 27
HELP = "write a run as ONNX stage graphs and a manifest, for the runtime without PyTorch"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, help="run folder")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="the export folder to write")
    rule = p.add_mutually_exclusive_group()
    rule.add_argument("--early-exit", metavar="KEY",
                      help="the early-exit result whose policy and threshold to export (default: the latest)")
    rule.add_argument("--threshold", type=non_negative_float,
                      help="export this threshold of --policy instead of a calibrated one")
    p.add_argument("--policy", choices=POLICY_NAMES, help="policy of --threshold; maxprob when not given")
    p.add_argument("--no-exits", action="store_true",
                   help="export the backbone alone (one stage, no IC), to measure early exit against")
    p.add_argument("--quantize", choices=PRECISIONS, help="quantise the stages to int8 (onnxruntime static "
                   "quantisation) and choose the early-exit result's threshold again on their outputs, on that "
                   "result's calibration data; with --threshold, the threshold is kept and the run's holdout (or "
                   "training) split sets the int8 ranges")
    p.add_argument("--data-dir", type=Path, help="where the run's data is now, when it moved (for --quantize)")
    p.add_argument("--threads", type=positive_int, help="CPU threads PyTorch uses while exporting")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..errors import UserError
    from ..export import export_run

    if args.policy is not None and args.threshold is None:
        raise UserError("--policy goes with --threshold")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.data_dir is not None and args.quantize is None:
        raise UserError("--data-dir goes with --quantize")
    manifest = export_run(args.run, args.out, args.early_exit, args.threshold, args.policy, args.no_exits,
                          args.quantize or "fp32", args.data_dir)
    policy = manifest.policy
    source = policy.source.get("early_exit_result") or policy.source.get("chosen_by", "")
    print(f"exits: {', '.join(f'{n} ({f / manifest.backbone_flops:.0%})' for n, f in zip(manifest.exit_names, manifest.exit_flops))}")
    print(f"policy: {policy.name} at {_threshold(policy.threshold)} ({source})")
    if manifest.quantisation is not None and "fp32_policy" in policy.source:
        print(f"int8: threshold chosen again on {policy.source['calibrated_on'].get('samples')} calibration images "
              f"(fp32: {_threshold(policy.source['fp32_policy']['threshold'])})")
    print(f"wrote {len(manifest.stages)} stage graphs, the fused early-exit graph and the manifest to {args.out}")
    return 0


def _threshold(value: float | tuple[float, ...]) -> str:
    return ", ".join(f"{v:.4g}" for v in value) if isinstance(value, tuple) else f"{value:.4g}"
