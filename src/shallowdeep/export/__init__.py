"""An SDN as a deployment folder: one ONNX graph per stage and a manifest (see :mod:`shallowdeep.runtime.manifest`).

>>> export_run("runs/r56-ic", "deploy/r56")                  # the run's latest early-exit result
>>> export_run("runs/r56-ic", "deploy/r56", threshold=0.9)   # or a threshold of one's own
>>> export_sdn(net, "deploy/mine", classes=..., mean=..., std=..., policy=Policy("maxprob", 0.9))

Each stage is exported with ``torch.onnx.export`` (the dynamo exporter), checked by ``onnx.checker`` and then
run by onnxruntime against PyTorch on an example batch. The folder is written beside its destination and moved
into place at the end; an existing folder is replaced only when it holds an export.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import onnx
import torch
from torch import nn

from .. import __version__
from ..choices import PRECISIONS
from ..errors import UserError
from ..exit_outputs import exit_names
from ..io import atomic_write_json, file_sha256
from ..runtime.engine import make_session
from ..runtime.graphs import fused_early_exit
from ..run_folder import is_run_folder
from ..runtime.manifest import FUSED_GRAPH, MANIFEST, Manifest, Policy, Stage, is_export
from ..sdn import SDN
from .quantise import Calibration, quantise_export, run_calibration
from .stages import OPSET, StageModule, export_stage

CHECK_TOLERANCE = 1e-3  # largest difference between onnxruntime's and PyTorch's logits an export may show


def export_sdn(net: SDN, out: str | Path, *, classes: Sequence[str], mean: Sequence[float], std: Sequence[float],
               policy: Policy, input_shape: Sequence[int] | None = None,
               made_from: dict[str, Any] | None = None, int8: Calibration | None = None) -> Manifest:
    """Export ``net`` for images of ``input_shape`` (C, H, W; default: the one its ``spec`` records) with its
    data's ``classes`` and normalisation and the exit ``policy`` to the folder ``out``; returns the manifest
    written there. ``int8``: quantise the stages, with this calibration data (see :mod:`.quantise`)."""
    net = net.eval()
    shape = tuple(input_shape or (net.spec.input_shape if net.spec is not None else ()))
    if len(shape) != 3:
        raise UserError("say which images the SDN takes: input_shape=(channels, height, width)")
    with torch.no_grad():
        num_classes = net(torch.zeros(1, *shape))[-1].shape[1]
    if len(classes) != num_classes:
        raise UserError(f"{len(classes)} class names given for a network with {num_classes} classes")
    policy.keys(len(net.ics))  # a per-exit policy has one threshold per IC
    out = Path(out)
    with _new_folder(out) as folder:
        stages, graphs = _export_stages(net, shape, folder)
        ensemble = None if net.ensemble is None else {
            "weights": [w.detach().tolist() for w in net.ensemble.weights],
            "bias": net.ensemble.bias.detach().tolist(),
            "note": "exit k answers log_softmax(sum_i weights[k][i] * log_softmax(IC i's logits) + bias[k]); "
                    "stage k's graph computes it"}
        manifest = Manifest(
            opset=OPSET, input_shape=shape, mean=tuple(map(float, mean)), std=tuple(map(float, std)),
            classes=tuple(map(str, classes)), exit_names=tuple(exit_names(net.num_exits, net.exit_names)),
            exit_flops=tuple(net.exit_flops), backbone_flops=net.backbone_flops, stages=tuple(stages),
            policy=policy, ic_design={**net.ic_design.to_dict(), "cascade": net.ic_design.cascades},
            ensemble=ensemble, made_from={"shallowdeep": __version__, "torch": torch.__version__, **(made_from or {})})
        if int8 is not None:
            manifest, graphs = quantise_export(folder, manifest, int8)
        fused = fused_early_exit(manifest, graphs, manifest.policy.name, manifest.policy.keys(len(net.ics)))
        onnx.checker.check_model(fused)
        onnx.save(fused, str(folder / FUSED_GRAPH))
        atomic_write_json(folder / MANIFEST, manifest.to_dict())
    return manifest


def export_run(run_dir: str | Path, out: str | Path, early_exit_key: str | None = None,
               threshold: float | Sequence[float] | None = None, policy: str | None = None,
               no_exits: bool = False, precision: str = "fp32", data_dir: str | Path | None = None) -> Manifest:
    """Export the trained SDN of ``run_dir`` to ``out`` with the policy and threshold of one of its early-exit
    results (``early_exit_key``; default the latest), or ``threshold`` (of ``policy``, default maxprob); with
    ``no_exits``, its backbone alone (one stage, no IC: what early exit is measured against). ``precision``
    'int8' quantises the stages and chooses the result's threshold again on the int8 outputs, on the result's
    own calibration data (read from ``data_dir`` when the run's data moved)."""
    from ..classifier import load
    from ..run import open_run

    run = open_run(run_dir)
    if no_exits and (early_exit_key is not None or threshold is not None or policy is not None):
        raise UserError("an export without exits has no policy or threshold")
    if precision not in ("fp32", *PRECISIONS):
        raise UserError(f"unknown precision '{precision}': choose fp32 or {', '.join(PRECISIONS)}")
    chosen = NO_EXITS if no_exits else run_policy(run.path, early_exit_key, threshold, policy)
    _check_destination(Path(out))
    int8 = None if precision == "fp32" else run_calibration(run, chosen, data_dir)
    classifier = load(run.path)
    made_from = {"run": str(run.path.resolve()), "checkpoint_sha256": file_sha256(run.checkpoint_path)}
    net = backbone_only(classifier.net) if no_exits else classifier.net
    return export_sdn(net, out, classes=classifier.class_names, mean=classifier.mean, std=classifier.std,
                      policy=chosen, input_shape=classifier.input_shape, made_from=made_from, int8=int8)


NO_EXITS = Policy("maxprob", 1.0, {"chosen_by": "none: the export has no exit but the final head"})


def backbone_only(net: SDN) -> SDN:
    """``net``'s backbone as an SDN of one stage and no IC (sharing its parameters)."""
    return SDN([nn.Sequential(*net.segments)], [], [], [net.backbone_flops], net.backbone_flops).eval()


def run_policy(run_path: Path, key: str | None, threshold: float | Sequence[float] | None,
               policy: str | None) -> Policy:
    """The exit policy an export of the run at ``run_path`` applies: ``threshold`` (of ``policy``) when given,
    else that of the early-exit result named ``key`` (default: the latest), with where it came from."""
    from ..run_results import find_early_exit

    if threshold is not None:
        if key is not None:
            raise UserError("give either an early-exit result or a threshold, not both")
        name = policy or ("maxprob-per-exit" if isinstance(threshold, (list, tuple)) else "maxprob")
        return Policy(name, tuple(threshold) if isinstance(threshold, (list, tuple)) else float(threshold),
                      {"chosen_by": "given at export (not calibrated by shallowdeep)"})
    if policy is not None:
        raise UserError("a policy for the export needs its threshold")
    found = find_early_exit(run_path, key)
    key = found["key"]
    raw = found.get("threshold")
    try:
        chosen = Policy(str(found.get("policy")), tuple(raw) if isinstance(raw, list) else raw, {})
    except UserError as exc:
        raise UserError(f"the early-exit result '{key}' of {run_path} is damaged ({exc}); run shallowdeep "
                        "early-exit again") from None
    test = found.get("test", {}).get("early_exit") if isinstance(found.get("test"), dict) else None
    source = {"early_exit_result": key, "criterion": found.get("criterion"),
              "calibrated_on": found.get("calibrated_on"), "test": test}
    return Policy(chosen.name, chosen.threshold, source)


def _export_stages(net: SDN, shape: tuple[int, ...], folder: Path) -> tuple[list[Stage], list[onnx.ModelProto]]:
    """Every stage of ``net`` as ``stage<k>.onnx`` in ``folder``, each checked against PyTorch on an example."""
    generator = torch.Generator().manual_seed(0)
    values: dict[str, torch.Tensor] = {"h": torch.randn(2, *shape, generator=generator)}
    stages, graphs = [], []
    names = exit_names(net.num_exits, net.exit_names)
    for index in range(net.num_exits):
        module = StageModule(net, index)
        what = f"stage {index} (up to exit '{names[index]}')"
        example = {name: values[name] for name in module.input_names}
        file = f"stage{index}.onnx"
        graphs.append(export_stage(module, example, folder / file, what))
        with torch.no_grad():
            outputs = dict(zip(module.output_names, module(**example)))
        _check_against_torch(folder / file, example, outputs, what)
        stages.append(Stage(file, tuple(module.input_names), tuple(module.output_names)))
        values = {name.removesuffix("_next"): v for name, v in outputs.items() if name.endswith("_next")}
    return stages, graphs


def _check_against_torch(path: Path, example: dict[str, torch.Tensor], expected: dict[str, torch.Tensor],
                         what: str) -> None:
    """onnxruntime's outputs of the exported stage equal PyTorch's on ``example`` (within CHECK_TOLERANCE)."""
    session = make_session(path, what=f"{what} as exported")
    got = session.run(None, {name: v.numpy() for name, v in example.items()})
    for output, value in zip(session.get_outputs(), got):
        gap = float(np.max(np.abs(value - expected[output.name].float().numpy()), initial=0.0))
        if not gap <= CHECK_TOLERANCE * max(1.0, float(expected[output.name].abs().max())):
            raise UserError(f"{what} exported, but onnxruntime's '{output.name}' differs from PyTorch's by {gap:.3g}")


def _check_destination(out: Path) -> None:
    """A one-line error unless ``out`` is new, an empty folder or an earlier export (which is replaced), outside
    every run folder."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file; exports go to a folder")
    inside = next((p for p in (out.resolve(), *out.resolve().parents) if is_run_folder(p)), None)
    if inside is not None:
        raise UserError(f"{out} lies in the run folder {inside}; export to a folder outside it")
    if out.is_dir() and any(out.iterdir()) and not is_export(out):
        raise UserError(f"{out} is not empty and holds no export; exporting replaces only an earlier export")


@contextmanager
def _new_folder(out: Path) -> Iterator[Path]:
    """A temporary folder beside ``out`` to write the export in, moved to ``out`` when the block ends (an earlier
    export there is replaced; nothing is left behind when the block fails)."""
    _check_destination(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".exporting", dir=out.parent))
    try:
        yield work
        os.chmod(work, 0o777 & ~_umask())  # mkdtemp makes folders private
        old = None
        if out.exists():
            _check_destination(out)
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".replaced", dir=out.parent))
            os.replace(out, old / "export")
        os.replace(work, out)
        if old is not None:
            shutil.rmtree(old)
    finally:
        if work.exists():
            shutil.rmtree(work)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
