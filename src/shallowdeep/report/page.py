"""``write_report``: one self-contained HTML page of a run, with the PNGs and JSON it shows."""

from __future__ import annotations

from pathlib import Path

import torch

from ..analysis import overthinking
from ..outputs import load_outputs, load_run_data
from ..run import open_run
from ..run_results import report_dir, write_report_files
from . import html
from .context import ReportContext
from .external import backdoor_section, tradeoff_section
from .sections import confusion_section, exits_section, gradcam_section, overthinking_section


def write_report(run_dir: str | Path, device: str | torch.device = "cpu", gradcam_samples: int = 6,
                 examples_per_exit: int = 8, seed: int = 0, data_dir: str | Path | None = None,
                 cache_dir: str | Path | None = None) -> Path:
    """Write ``RUN/report/index.html`` (images embedded, no network needed), its PNGs and ``report.json``.

    Per-exit outputs of the train (un-augmented), holdout and test splits are computed once and
    cached in the run; the network itself runs only for Grad-CAM of ``gradcam_samples`` test images.
    The example images and the Grad-CAM samples are drawn at random with ``seed``, balanced over classes.
    ``data_dir`` and ``cache_dir``: see :func:`shallowdeep.outputs.load_run_data`.
    Returns the path of the page.
    """
    run = open_run(run_dir)
    splits = load_run_data(run, data_dir, cache_dir)
    device = torch.device(device)
    outputs = {name: load_outputs(run, name, device, splits=splits) for name in ("train", "holdout", "test")}
    ctx = ReportContext(run, report_dir(run.path), splits, outputs, device, seed)
    over = overthinking(outputs["test"], ctx.exit_names)
    sections = [
        exits_section(ctx),
        tradeoff_section(ctx, over),
        overthinking_section(ctx, over, examples_per_exit),
        confusion_section(ctx),
        gradcam_section(ctx, gradcam_samples),
        backdoor_section(ctx),
    ]
    spec = splits.spec
    subtitle = (f"run {run.path.name}: {run.config['model'].get('arch') or run.config['model'].get('factory')} "
                f"on {spec.name} ({spec.num_classes} classes, {spec.input_size}x{spec.input_size}), "
                f"{ctx.num_exits - 1} internal classifiers")
    page = html.page("Shallow-Deep Network report", subtitle, [s for s in sections if s is not None])
    settings = {"run": str(run.path), "device": str(device), "gradcam_samples": gradcam_samples,
                "examples_per_exit": examples_per_exit, "seed": seed, "figures": sorted(ctx.figures)}
    return write_report_files(run.path, ctx.figures, {"settings": settings, **ctx.summary}, page)
