"""The report's sections, each returning its HTML and recording its figures and numbers in the context."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..analysis import confusion_report, earliest_correct_exit, overthinking
from ..analysis.gradcam import disagreements, gradcam
from ..data import ImageData, batches
from ..errors import UserError
from . import html, plots
from .context import ReportContext
from .tradeoff import maxprob_curve, read_early_exit, stored_curve, stored_point


def exits_section(ctx: ReportContext) -> str:
    """Accuracy and cost of every exit (table and plot)."""
    test, holdout = ctx.outputs["test"], ctx.outputs["holdout"]
    cost = [float(f) / test.backbone_flops for f in test.exit_flops]
    accuracy = {"test": test.correct.mean(1).tolist()}
    if holdout.labels.size:
        accuracy["holdout"] = holdout.correct.mean(1).tolist()
    rows = [
        (label, name, f"{flops / 1e6:.2f}", pct(c), pct(accuracy.get("holdout", [None] * len(cost))[i]),
         pct(accuracy["test"][i]))
        for i, (label, name, flops, c) in enumerate(zip(ctx.labels, ctx.layer_names, test.exit_flops, cost))
    ]
    ctx.summary["exits"] = {"labels": ctx.labels, "layers": ctx.layer_names, "flops": [int(f) for f in test.exit_flops],
                            "flops_fraction": cost, "accuracy": accuracy, "backbone_flops": int(test.backbone_flops)}
    parts = [
        html.paragraph(f"{test.labels.size} test and {holdout.labels.size} holdout images. Cost is the cumulative "
                       "FLOPs per image to reach an exit (the ICs on the way included), as a share of the "
                       "unmodified backbone's FLOPs."),
        html.table(["exit", "layer", "MFLOPs", "cost", "holdout accuracy", "test accuracy"], rows),
        ctx.add_figure("accuracy", plots.accuracy_cost_plot(ctx.labels, cost, accuracy), "Accuracy of every exit against its cost."),
    ]
    return html.section("Exits: accuracy and cost", parts, "exits")


def tradeoff_section(ctx: ReportContext, over: dict[str, Any]) -> str:
    """The early-exit curve with the chosen point and the oracle."""
    test = ctx.outputs["test"]
    final = (1.0, float(test.correct[-1].mean()))
    oracle = (over["oracle"]["relative_cost"], over["oracle"]["accuracy"])
    stored = read_early_exit(ctx.run.path)
    curve = stored_curve(stored) if stored else None
    parts = []
    if curve is not None:
        cost, accuracy = curve
        label = f"{stored.get('policy', 'early exit')} policy (from early-exit.json)"
        chosen = stored_point(stored, "early_exit")
        oracle = stored_point(stored, "oracle") or oracle
        final = stored_point(stored, "final_head") or final
    else:
        local = maxprob_curve(test.logits, test.labels, test.exit_flops, test.backbone_flops)
        cost, accuracy, label, chosen = local["flops_fraction"], local["accuracy"], "max-probability policy, q in [0, 1]", None
        first = ("early-exit.json holds no test curve this report can read"
                 if stored else "No threshold chosen yet: run `shallowdeep early-exit RUN` to calibrate one on the holdout split")
        parts.append(html.paragraph(
            f"{first}. The curve below sweeps the paper's max-probability threshold q on the test split.", note=True))
    ctx.summary["early_exit"] = {"source": "early-exit.json" if curve is not None else "max-probability sweep on test",
                                 "curve": {"flops_fraction": list(cost), "accuracy": list(accuracy)},
                                 "chosen": chosen, "oracle": oracle, "final_head": final}
    if stored:
        parts += _early_exit_tables(stored)
    if stored and curve is None and (ctx.run.path / "early-exit.png").is_file():
        parts.append(html.figure((ctx.run.path / "early-exit.png").read_bytes(), "early-exit.png, as the early-exit command drew it."))
    caption = "Accuracy against average cost on the test split; the oracle lets every sample leave at its earliest correct exit."
    parts.append(ctx.add_figure("tradeoff", plots.tradeoff_plot(cost, accuracy, oracle, final, chosen, label), caption))
    return html.section("Early exit: the trade-off", parts, "early-exit")


def _early_exit_tables(stored: dict[str, Any]) -> list[str]:
    """The chosen policy's figures from early-exit.json: a summary when it has the usual layout, else every value."""
    rows = []
    for split in ("calibration", "test"):
        for name in ("early_exit", "final_head", "oracle"):
            entry = stored.get(split, {}).get(name) if isinstance(stored.get(split), dict) else None
            if isinstance(entry, dict):
                rows.append((split, name.replace("_", " "), pct(entry.get("accuracy")), fmt(entry.get("flops_fraction"))))
    if not rows:
        return [html.table(["early-exit.json", "value"],
                           [(k, fmt(v)) for k, v in flatten(stored).items() if not isinstance(v, list)])]
    source = stored.get("calibrated_on") if isinstance(stored.get("calibrated_on"), dict) else {}
    chosen = (f"{stored.get('policy', '?')} threshold {fmt(stored.get('threshold'))} chosen on the "
              f"{source.get('split', '?')} split of {source.get('dataset', '?')} ({source.get('samples', '?')} images, "
              f"{source.get('source', '?')} data); criterion: {fmt(stored.get('criterion'))}.")
    return [html.paragraph(chosen), html.table(["data", "", "accuracy", "cost (fraction of the backbone)"], rows)]


def overthinking_section(ctx: ReportContext, over: dict[str, Any], examples_per_exit: int) -> str:
    """Wasteful and destructive overthinking with example images per earliest correct exit."""
    test = ctx.outputs["test"]
    wasteful, destructive = over["wasteful"], over["destructive"]
    dist = wasteful["earliest_correct_exit"]
    parts = [
        html.table(["measure (test split)", "value"], [
            ("wasteful: some IC before the final head is already right", pct(wasteful["share"])),
            ("oracle accuracy (some exit is right)", pct(over["oracle"]["accuracy"])),
            ("oracle average cost (fraction of the backbone)", f"{over['oracle']['relative_cost']:.3f}"),
            ("final head's mistakes", destructive["final_mistakes"]),
            ("destructive: of those, some earlier IC was right", pct(destructive["share_of_mistakes"])),
            ("destructive: share of all test samples", pct(destructive["share_of_samples"])),
        ]),
        ctx.add_figure("earliest_exit", plots.earliest_exit_plot(ctx.labels, dist["shares"], dist["none_share"]),
                       "Where each test sample is first classified correctly."),
    ]
    if examples_per_exit > 0:
        parts.append(ctx.add_figure("examples", _examples_grid(ctx, examples_per_exit),
                                    "Test images grouped by their earliest correct exit (captions: true class; "
                                    "for 'none': true / final prediction)."))
    parts += [
        ctx.add_figure("destructive", plots.destructive_plot(
            ctx.labels[:-1], [r["count"] for r in destructive["per_ic"]], [r["mean_confidence"] for r in destructive["per_ic"]]),
            "Per IC: final-head mistakes this IC classifies correctly, and its mean confidence on them."),
    ]
    ctx.summary["overthinking"] = over
    return html.section("Overthinking", parts, "overthinking")


def confusion_section(ctx: ReportContext) -> str:
    """Confusion histograms of correct and wrong samples, with both AUROCs."""
    report = confusion_report(ctx.outputs["train"], ctx.outputs["test"])
    auroc = report["auroc"]
    hist = report["histogram"]
    title = f"Confusion: AUROC {fmt(auroc['confusion'])} (1 - max prob: {fmt(auroc['confidence'])})"
    parts = [
        html.paragraph("Confusion = sum over ICs of the L1 distance between the IC's softmax and the final head's, "
                       "z-normalised with the mean and standard deviation on the un-augmented training split. "
                       "AUROC: how well each score separates the final head's mistakes (positives) from its correct answers."),
        html.table(["error indicator (test split)", "AUROC"],
                   [("confusion score", fmt(auroc["confusion"])), ("1 - max softmax of the final head", fmt(auroc["confidence"]))]),
        html.table(["mean confusion", "value"], [("final head correct", fmt(report["mean_confusion"]["correct"])),
                                                ("final head wrong", fmt(report["mean_confusion"]["wrong"]))]),
        ctx.add_figure("confusion", plots.confusion_histogram(hist["edges"], hist["correct"], hist["wrong"], title),
                       "Normalised confusion of the test samples the final head gets right and wrong."),
    ]
    ctx.summary["confusion"] = report
    return html.section("Confusion as an error indicator", parts, "confusion")


def gradcam_section(ctx: ReportContext, samples: int) -> str:
    """Grad-CAM of IC 1 and of the final head where IC 1 is right and the final head wrong."""
    test = ctx.outputs["test"]
    found = disagreements(test.correct, 0)
    chosen = found[:samples]
    ctx.summary["gradcam"] = {"disagreements": int(found.size), "shown": chosen.tolist()}
    if chosen.size == 0:
        text = "No test sample is classified correctly by IC 1 and wrongly by the final head." if samples else "Grad-CAM skipped."
        return html.section("Grad-CAM of disagreements", [html.paragraph(text, note=True)], "gradcam")
    net = ctx.run.load_net(ctx.device)
    data = ctx.splits.test.subset(torch.as_tensor(chosen))
    x, _ = next(batches(data, ctx.splits.spec, len(chosen), train=False, shuffle=False, device=ctx.device))
    final_pred = torch.as_tensor(test.predictions[-1, chosen])
    ic_maps, ic_layer = gradcam(net, x, data.labels, 0)
    final_maps, final_layer = gradcam(net, x, final_pred, net.num_exits - 1)
    classes = ctx.splits.spec.classes
    captions = [(f"#{i}: {classes[int(y)]}", f"IC 1 says {classes[int(y)]}", f"final says {classes[int(p)]}")
                for i, y, p in zip(chosen, data.labels, final_pred)]
    ctx.summary["gradcam"].update({"ic_layer": ic_layer, "final_layer": final_layer})
    parts = [
        html.paragraph(f"{found.size} test samples are right at IC 1 and wrong at the final head; the first "
                       f"{chosen.size} are shown. Each map explains the class that head predicts. IC 1: {ic_layer}. "
                       f"Final head: {final_layer}."),
        ctx.add_figure("gradcam", plots.gradcam_grid(data.images.numpy(), ic_maps, final_maps, captions),
                       "Image, Grad-CAM of IC 1 (right), Grad-CAM of the final head (wrong)."),
    ]
    return html.section("Grad-CAM of disagreements", parts, "gradcam")


def backdoor_section(ctx: ReportContext) -> str | None:
    """The backdoor study's numbers and figures, shown as they are, when ``RUN/backdoor.json`` exists."""
    path = ctx.run.path / "backdoor.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is damaged (not valid JSON); run shallowdeep backdoor again") from exc
    rows = [(k, fmt(v)) for k, v in flatten(data).items()]
    parts = [html.table(["backdoor.json", "value"], rows)]
    for png in sorted(Path(ctx.run.path).glob("backdoor*.png")):
        parts.append(html.figure(png.read_bytes(), png.name))
    ctx.summary["backdoor"] = {"source": "backdoor.json", "figures": [p.name for p in sorted(ctx.run.path.glob("backdoor*.png"))]}
    return html.section("Backdoor", parts, "backdoor")


def _examples_grid(ctx: ReportContext, per_exit: int) -> bytes:
    test = ctx.outputs["test"]
    earliest = earliest_correct_exit(test.correct)
    images = ctx.splits.test.images
    classes = ctx.splits.spec.classes
    rows, captions = [], []
    for exit_index in [*range(ctx.num_exits), -1]:
        picked = np.flatnonzero(earliest == exit_index)[:per_exit]
        rows.append([images[i].numpy() for i in picked])
        if exit_index >= 0:
            captions.append([classes[test.labels[i]] for i in picked])
        else:
            captions.append([f"{classes[test.labels[i]]} / {classes[test.predictions[-1, i]]}" for i in picked])
    return plots.image_grid(rows, [*ctx.labels, "none"], captions)


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level with dotted keys; lists of plain numbers kept, other lists summarised."""
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(data, list) and not all(isinstance(v, (int, float, str, bool)) or v is None for v in data):
        return {prefix: f"[{len(data)} entries]"}
    return {prefix: data}


def fmt(value: Any) -> str:
    """A value formatted for a table cell."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k.replace('_', ' ')} {fmt(v)}" for k, v in value.items())
    if isinstance(value, list):
        shown = ", ".join(fmt(v) for v in value[:12])
        return f"[{shown}{', …' if len(value) > 12 else ''}]"
    return str(value)


def pct(value: float | None) -> str:
    """A share as a percentage with one decimal."""
    return "–" if value is None else f"{100 * value:.1f} %"
