"""int8 stage graphs for an export, and the exit threshold chosen again on what they answer.

Every stage graph is quantised with onnxruntime's static quantisation (see :mod:`.int8_worker`: int8 weights per
output channel, uint8 activations with ranges measured on calibration images; only convolutions and matrix
products). Quantisation moves every exit's confidences a little, so the fp32
threshold no longer answers the criterion it was chosen for: :func:`rechoose_policy` runs the int8 stages on
the calibration data and picks the threshold again with the same criterion.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..errors import UserError
from ..exit_outputs import ExitOutputs
from ..exits import calibrate
from ..exits.halves import split_halves
from ..io import atomic_write_json
from ..runtime.engine import Runtime, make_session
from ..runtime.manifest import MANIFEST, Manifest, Policy
from .int8_worker import QUANTISED_OPS

RANGE_SAMPLES = 512  # calibration images whose activations set the int8 ranges
CHUNK = 512  # images run through the int8 stages at a time when the threshold is chosen again


@dataclass(frozen=True)
class Calibration:
    """The labelled images (uint8 ``(N, C, H, W)``) that set the int8 ranges and choose the threshold again, the
    criterion the threshold is chosen by (None: the threshold was given, and is kept) and a record of where the
    images came from."""

    images: np.ndarray
    labels: np.ndarray
    criterion: dict[str, Any] | None
    data: dict[str, Any]


def quantise_export(folder: Path, manifest: Manifest, calibration: Calibration) -> tuple[Manifest,
                                                                                         list[onnx.ModelProto]]:
    """The fp32 export being written in ``folder`` (its stage graphs and ``manifest``) made int8: its stage graphs
    replaced, its threshold chosen again (see the module docstring); returns its new manifest (written to
    ``folder``) and stage graphs."""
    atomic_write_json(folder / MANIFEST, manifest.to_dict())  # the runtime reads the stages through it
    images = Runtime(folder).preprocess(calibration.images[:RANGE_SAMPLES])
    graphs = quantise_stages(folder, manifest, images)
    record = {"precision": "int8", "method": "onnxruntime static quantisation, QDQ: int8 weights per output "
              "channel, uint8 activations", "operators": list(QUANTISED_OPS),
              "range_samples": len(images), "calibrated_on": calibration.data}
    manifest = replace(manifest, quantisation=record)
    atomic_write_json(folder / MANIFEST, manifest.to_dict())
    if calibration.criterion is not None:
        policy = rechoose_policy(folder, manifest.policy, calibration.criterion, calibration.images,
                                 calibration.labels, calibration.data)
        manifest = replace(manifest, policy=policy)
    return manifest, graphs


def quantise_stages(folder: Path, manifest: Manifest, images: np.ndarray) -> list[onnx.ModelProto]:
    """Replace every stage graph of the export being written in ``folder`` by its int8 version, activation ranges
    measured on the normalised ``images``; returns the new graphs in order. The quantiser runs in a process of
    its own (see :mod:`.int8_worker`)."""
    values: dict[str, np.ndarray] = {"h": images}
    work = Path(tempfile.mkdtemp(prefix="int8-", dir=folder))
    try:
        jobs = []
        for stage in manifest.stages:
            feeds = {name: values[name] for name in stage.inputs}
            session = make_session(folder / stage.file, what=f"{stage.file} before quantisation")
            outputs = dict(zip((o.name for o in session.get_outputs()), session.run(None, feeds)))
            np.savez(work / f"{stage.file}.npz", **feeds)
            jobs.append({"source": str(folder / stage.file), "target": str(work / stage.file),
                         "feeds": str(work / f"{stage.file}.npz")})
            values = {name.removesuffix("_next"): v for name, v in outputs.items() if name.endswith("_next")}
        (work / "jobs.json").write_text(json.dumps(jobs))
        done = subprocess.run([sys.executable, "-m", "shallowdeep.export.int8_worker", str(work / "jobs.json")],
                              capture_output=True, text=True)
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines() or ["the quantiser stopped without saying why"]
            raise UserError(lines[-1])
        for job in jobs:
            os.replace(job["target"], job["source"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return [onnx.load(str(folder / stage.file)) for stage in manifest.stages]


def rechoose_policy(folder: Path, policy: Policy, criterion: dict[str, Any], images: np.ndarray,
                    labels: np.ndarray, data: dict[str, Any]) -> Policy:
    """``policy`` with its threshold chosen again by ``criterion`` (``max_drop``, ``budget``, ``confidence`` as an
    early-exit result records them, a certified one with the default seed as ``shallowdeep early-exit`` uses) on
    what the int8 export in ``folder`` answers on the uint8 ``images`` (labels ``labels``; ``data`` says where
    they came from)."""
    runtime = Runtime(folder)
    manifest = runtime.manifest
    logits = [np.concatenate(parts) for parts in zip(*(runtime.exit_logits(images[i:i + CHUNK])
                                                        for i in range(0, len(images), CHUNK)))]
    outputs = ExitOutputs(np.stack(logits).astype(np.float32), labels.astype(np.int64),
                          np.asarray(manifest.exit_flops, np.int64), manifest.backbone_flops)
    per_exit = policy.name.endswith("-per-exit")
    chosen = calibrate(outputs, policy.name.removesuffix("-per-exit"), max_drop=criterion.get("max_drop"),
                       budget=criterion.get("budget"), confidence=criterion.get("confidence"), per_exit=per_exit)
    threshold = chosen.threshold
    return Policy(policy.name, tuple(map(float, threshold)) if isinstance(threshold, tuple) else float(threshold),
                  {"chosen_by": "re-chosen on the int8 stages' outputs", "criterion": criterion, "calibrated_on": data,
                   "fp32_policy": {"threshold": policy.threshold, **policy.source}})


def run_calibration(run: Any, policy: Policy, data_dir: str | Path | None = None) -> Calibration:
    """The calibration data of an int8 export of ``run`` with ``policy``: the data its early-exit result chose the
    threshold on (the same test half, or the run's holdout or training split), with that result's criterion;
    for a threshold given at export (kept as given), the run's holdout split, else its training split, only sets
    the int8 ranges. ``data_dir``: where the run's data is now, when it moved."""
    from ..outputs import load_run_data

    source = policy.source.get("calibrated_on")
    if "early_exit_result" in policy.source and not (isinstance(source, dict) and source.get("source") in
                                                     ("test-half", "run")):
        raise UserError(f"the early-exit result '{policy.source['early_exit_result']}' chose its threshold on data "
                        "other than the run's own; an int8 export chooses it again on the same data, which it "
                        "cannot read: export with an early-exit result calibrated on the run's data, or a threshold")
    splits = load_run_data(run, data_dir)
    if source is None:
        split = splits.holdout if len(splits.holdout) else splits.train
        name = "holdout" if len(splits.holdout) else "train"
        return Calibration(split.images.numpy(), split.labels.numpy(), None,
                           {"source": "run", "split": name, "samples": len(split)})
    if source["source"] == "test-half":
        half, _ = split_halves(len(splits.test), int(source.get("seed", 0)))
        images, labels = splits.test.images.numpy()[half], splits.test.labels.numpy()[half]
    elif source.get("split") in ("holdout", "train"):
        split = getattr(splits, source["split"])
        images, labels = split.images.numpy(), split.labels.numpy()
    else:
        raise UserError(f"the early-exit result '{policy.source['early_exit_result']}' records calibration data "
                        f"{source!r} that an int8 export cannot read again; run shallowdeep early-exit again")
    if len(labels) != source.get("samples", len(labels)):
        raise UserError(f"the run's data now has {len(labels)} calibration samples where its early-exit result had "
                        f"{source['samples']}; pass --data-dir where the run's data is")
    criterion = policy.source.get("criterion") or {}
    return Calibration(images, labels, dict(criterion), {**source, "note": "the early-exit result's own data"})
