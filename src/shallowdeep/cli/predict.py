"""Classify image files with a trained run or an export folder: each image's class, the exit it left at and
what it cost.

Files are read as the run's data was: grey or RGB as the network takes them, resized (bilinear) to its
input size; a folder is read recursively (its image files, sorted by path). A file that cannot be read
as an image stops the command with one line naming it. With a run folder the final head answers every image
unless --threshold (with --policy), --from-early-exit (the policy and threshold of the run's latest
early-exit result) or --early-exit KEY (those of the result KEY, as shallowdeep early-exit prints it) turns on
early exit; it prints the result's key, policy and threshold. With an export folder (shallowdeep export)
onnxruntime runs it without PyTorch, with the export's policy and threshold unless --threshold gives another;
--batch-size 1 runs each image through the fused early-exit graph, larger batches stream. Prints one row per
image, or writes them to --output (F.json or F.csv): path, class, class index, exit (0 = first IC), exit name
and FLOPs (and, for an export, the answer's confidence: its largest softmax probability).
"""

from __future__ import annotations

import argparse
import csv
import io
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..choices import POLICY_NAMES
from ..errors import UserError
from ._common import add_device_argument, non_negative_float, positive_int, resolve_device, table

if TYPE_CHECKING:
    from ..classifier import Answer, Classifier
    from ..exits import ExitPolicy
    from ..run import Run

NAME = "predict"
ORDER = 25
HELP = "classify image files or folders with a run (final head, or early exit)"
FIELDS = ("path", "class", "class_index", "exit", "exit_name", "flops")
EXPORT_FIELDS = (*FIELDS, "confidence")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, help="run folder, or export folder (shallowdeep export)")
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files, or folders read recursively")
    rule = p.add_mutually_exclusive_group()
    rule.add_argument("--threshold", type=non_negative_float,
                      help="early exit at this threshold of --policy; without it or --from-early-exit the final "
                           "head answers every image")
    rule.add_argument("--from-early-exit", action="store_true",
                      help="early exit with the policy and threshold of the run's latest early-exit result")
    p.add_argument("--early-exit", metavar="KEY",
                   help="early exit with the policy and threshold of this early-exit result of the run (its key "
                        "as shallowdeep early-exit prints it; run folders only)")
    p.add_argument("--policy", choices=POLICY_NAMES, help="policy of --threshold; maxprob when not given")
    p.add_argument("--output", type=Path, metavar="F.json|F.csv", help="write the rows to this file instead of "
                   "printing them; never a file in a run folder")
    p.add_argument("--force", action="store_true", help="replace --output when it exists")
    p.add_argument("--batch-size", type=positive_int, default=256, help="images per forward pass")
    add_device_argument(p)


def run(args: argparse.Namespace) -> int:
    if args.policy is not None and args.threshold is None:
        raise UserError("--policy goes with --threshold")
    if args.early_exit is not None and args.threshold is not None:
        raise UserError("--early-exit applies that result's threshold; leave out --threshold")
    if args.output is not None and args.output.suffix.lower() not in (".json", ".csv"):
        raise UserError(f"--output {args.output} must end in .json or .csv")
    if args.output is not None:
        from ..run_folder import check_output_file
        check_output_file(args.output, args.force)
    from ..runtime.manifest import is_export

    if is_export(args.run):
        return _predict_export(args)
    from ..classifier import load
    from ..run import open_run

    run_ = open_run(args.run)
    classifier = load(run_.path, resolve_device(args.device, args.threads))
    policy = None
    if args.from_early_exit or args.early_exit is not None:
        key, policy = _chosen_policy(run_, args.early_exit, len(classifier.net.ics))
        print(f"early exit: {policy.name} at {_threshold(policy.threshold)} (early-exit result '{key}')")
    answer = classifier.predict_files(args.images, args.threshold, policy or args.policy, args.batch_size)
    rows = _rows(answer, classifier)
    if args.output is None:
        print(table(["image", "class", "exit", "MFLOPs"],
                    [(r["path"], r["class"], r["exit_name"], f"{r['flops'] / 1e6:.2f}") for r in rows]))
    else:
        _write(args.output, rows, FIELDS)
        print(f"{len(rows)} images; wrote {args.output}")
    return 0


def _predict_export(args: argparse.Namespace) -> int:
    """``predict`` on an export folder, in onnxruntime: torch is never imported."""
    from ..runtime import load

    if args.from_early_exit or args.early_exit is not None:
        raise UserError(f"{args.run} is an export: it applies its own policy and threshold (pass --threshold "
                        "to apply another)")
    if args.device not in ("auto", "cpu"):
        raise UserError("an export runs in onnxruntime on the CPU; leave out --device")
    runtime = load(args.run, args.threshold, args.policy, args.threads)
    answer = runtime.predict_files(args.images, args.batch_size)
    rows = [{"path": _shown(path), "class": name, "class_index": int(index), "exit": int(exit_),
             "exit_name": exit_name, "flops": int(flops), "confidence": float(confidence)}
            for path, name, index, exit_, exit_name, flops, confidence in zip(
                answer.paths, answer.classes, answer.indices, answer.exits, answer.exit_names, answer.flops,
                answer.confidence)]
    policy = runtime.policy
    print(f"policy: {policy.name} at {policy.threshold} "
          f"({policy.source.get('early_exit_result') or policy.source.get('chosen_by') or policy.source.get('override', '')})")
    if args.output is None:
        print(table(["image", "class", "exit", "confidence", "MFLOPs"],
                    [(r["path"], r["class"], r["exit_name"], f"{r['confidence']:.3f}", f"{r['flops'] / 1e6:.2f}")
                     for r in rows]))
    else:
        _write(args.output, rows, EXPORT_FIELDS)
        print(f"{len(rows)} images; wrote {args.output}")
    return 0


def _chosen_policy(run_: Run, key: str | None, num_ics: int) -> tuple[str, ExitPolicy]:
    """The key of the run's early-exit result named ``key`` (default: the latest) and its policy with its
    threshold; a one-line error saying to run early-exit again when the result does not hold a usable one."""
    from ..exits import make_policy
    from ..run_results import find_early_exit
    from ..runtime.manifest import Policy

    found = find_early_exit(run_.path, key)
    name, threshold = found.get("policy"), found.get("threshold")
    try:
        Policy(str(name), threshold).keys(num_ics)
        return found["key"], make_policy(str(name), threshold)
    except (UserError, TypeError, ValueError, OverflowError) as exc:
        raise UserError(f"the early-exit result '{found['key']}' of {run_.path} holds no usable policy and "
                        f"threshold ({exc}); run shallowdeep early-exit {run_.path} again") from None


def _threshold(value: float | tuple[float, ...]) -> str:
    return ", ".join(f"{v:.4g}" for v in value) if isinstance(value, tuple) else f"{value:.4g}"


def _rows(answer: Answer, classifier: Classifier) -> list[dict[str, Any]]:
    """One row per image: its path, class and class index, exit (index and name) and FLOPs."""
    from ..exit_outputs import exit_names

    names = exit_names(classifier.net.num_exits, classifier.net.exit_names)
    return [{"path": _shown(path), "class": name, "class_index": index, "exit": exit_, "exit_name": names[exit_],
             "flops": flops}
            for path, name, index, exit_, flops in zip(answer.paths, answer.classes, answer.indices.tolist(),
                                                       answer.exits.tolist(), answer.flops.tolist())]


def _shown(path: Path) -> str:
    """A file's path as text that can be printed and saved: bytes that are not UTF-8 are written as escapes (a
    name holding the byte 0xff reads ``\\xff``), as the data's class names are."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _write(path: Path, rows: list[dict[str, Any]], fields: tuple[str, ...]) -> None:
    """``rows`` as a JSON list of objects or as CSV with a header line, by the suffix of ``path``."""
    from ..io import atomic_write_bytes, atomic_write_json

    if path.suffix.lower() == ".json":
        atomic_write_json(path, rows)
        return
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(path, text.getvalue().encode())
