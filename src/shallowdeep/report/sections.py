"""The report's sections on the run's own outputs, each returning its HTML and recording its figures and
numbers in the context."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..analysis import confusion_report
from ..analysis.gradcam import GRADCAM_NEEDS_MAPS, disagreements, gradcam, reads_feature_maps
from ..data import batches
from ..exits import earliest_correct_exit
from . import html, plots
from .cells import fmt, pct
from .context import ReportContext


def exits_section(ctx: ReportContext) -> str:
    """Accuracy and cost of every exit (table and plot)."""
    test, holdout = ctx.outputs["test"], ctx.outputs["holdout"]
    cost = [float(f) / test.backbone_flops for f in test.exit_flops]
    accuracy = {"test": test.correct.mean(1).tolist()}
    if holdout.labels.size:
        accuracy["holdout"] = holdout.correct.mean(1).tolist()
    holdout_accuracy = accuracy.get("holdout", [None] * len(cost))
    rows = [
        (name, layer, f"{flops / 1e6:.2f}", pct(c), pct(holdout_accuracy[i]), pct(accuracy["test"][i]))
        for i, (name, layer, flops, c) in enumerate(zip(ctx.exit_names, ctx.layer_names, test.exit_flops, cost))
    ]
    ctx.summary["exits"] = {"labels": ctx.exit_names, "layers": ctx.layer_names,
                            "flops": [int(f) for f in test.exit_flops], "flops_fraction": cost,
                            "accuracy": accuracy, "backbone_flops": int(test.backbone_flops)}
    parts = [
        html.paragraph(f"{test.labels.size} test and {holdout.labels.size} holdout images. Cost is the cumulative "
                       "FLOPs per image to reach an exit (the ICs on the way included), as a share of the "
                       "unmodified backbone's FLOPs."),
        html.table(["exit", "layer", "MFLOPs", "cost", "holdout accuracy", "test accuracy"], rows),
        ctx.add_figure("accuracy", plots.accuracy_cost_plot(ctx.exit_names, cost, accuracy),
                       "Accuracy of every exit against its cost."),
    ]
    return html.section("Exits: accuracy and cost", parts, "exits")


def overthinking_section(ctx: ReportContext, over: dict[str, Any], examples_per_exit: int) -> str:
    """Wasteful and destructive overthinking with example images per earliest correct exit."""
    wasteful, destructive = over["wasteful"], over["destructive"]
    earliest = wasteful["earliest_correct_exit"]
    parts = [
        html.table(["measure (test split)", "value"], [
            ("wasteful: some IC before the final head is already right", pct(wasteful["share"])),
            ("oracle accuracy (some exit is right)", pct(over["oracle"]["accuracy"])),
            ("oracle average cost (share of the backbone's FLOPs)", pct(over["oracle"]["relative_cost"])),
            ("final head's mistakes", destructive["final_mistakes"]),
            ("destructive: of those, some earlier IC was right", pct(destructive["share_of_mistakes"])),
            ("destructive: share of all test samples", pct(destructive["share_of_samples"])),
        ]),
        ctx.add_figure("earliest_exit",
                       plots.earliest_exit_plot(ctx.exit_names, earliest["shares"], earliest["none_share"]),
                       "Where each test sample is first classified correctly."),
    ]
    if examples_per_exit > 0:
        parts += _examples(ctx, examples_per_exit)
    per_ic = destructive["per_ic"]
    bars = plots.destructive_plot(ctx.exit_names[:-1], [r["count"] for r in per_ic],
                                  [r["mean_confidence"] for r in per_ic])
    parts.append(ctx.add_figure("destructive", bars, "Per IC: final-head mistakes this IC classifies correctly, "
                                                     "and its mean confidence on them."))
    ctx.summary["overthinking"] = over
    return html.section("Overthinking", parts, "overthinking")


def confusion_section(ctx: ReportContext) -> str:
    """Confusion histograms of correct and wrong samples, with both AUROCs."""
    report = confusion_report(ctx.outputs["train"], ctx.outputs["test"])
    auroc = report["auroc"]
    title = f"Confusion: AUROC {fmt(auroc['confusion'])} (1 - max prob: {fmt(auroc['confidence'])})"
    histogram = plots.confusion_histogram(report["histogram"], {"correct": "final head correct",
                                                                "wrong": "final head wrong"},
                                          title, "confusion (z-normalised on the training split)")
    caveat = confusion_caveat(auroc)
    parts = [
        html.paragraph("Confusion = sum over ICs of the L1 distance between the IC's softmax and the final head's, "
                       "z-normalised with the mean and standard deviation on the un-augmented training split. "
                       "AUROC: how well each score separates the final head's mistakes (positives) from its "
                       "correct answers; the final head's own max probability is the baseline to beat."),
        html.table(["error indicator (test split)", "AUROC"],
                   [("confusion score", fmt(auroc["confusion"])),
                    ("final head's max probability (scored as 1 - max softmax)", fmt(auroc["confidence"]))]),
        *([html.paragraph(caveat, note=True)] if caveat else []),
        html.table(["mean confusion", "value"], [("final head correct", fmt(report["mean_confusion"]["correct"])),
                                                ("final head wrong", fmt(report["mean_confusion"]["wrong"]))]),
        ctx.add_figure("confusion", histogram,
                       "Normalised confusion of the test samples the final head gets right and wrong."),
    ]
    ctx.summary["confusion"] = {**report, "caveat": caveat}
    return html.section("Confusion as an error indicator", parts, "confusion")


def confusion_caveat(auroc: dict[str, float | None]) -> str | None:
    """A warning when the confusion score tells the final head's mistakes apart worse than its plain max
    probability does (lower AUROC); None otherwise or when either AUROC is undefined."""
    confusion, confidence = auroc.get("confusion"), auroc.get("confidence")
    if confusion is None or confidence is None or confusion >= confidence:
        return None
    return (f"On this run's natural errors the confusion score flags the final head's mistakes worse than the final "
            f"head's plain max probability does (AUROC {fmt(confusion)} against {fmt(confidence)}), so prefer the "
            "max probability as an error indicator here.")


def gradcam_section(ctx: ReportContext, samples: int) -> str:
    """Grad-CAM of IC 1 and of the final head where IC 1 is right and the final head wrong."""
    test = ctx.outputs["test"]
    found = disagreements(test.correct, 0)
    chosen = ctx.sample(found, samples, "gradcam")
    ctx.summary["gradcam"] = {"disagreements": int(found.size), "shown": chosen.tolist()}
    if chosen.size == 0:
        text = "No test sample is right at IC 1 and wrong at the final head." if samples else "Grad-CAM skipped."
        return html.section("Grad-CAM of disagreements", [html.paragraph(text, note=True)], "gradcam")
    net = ctx.run.load_net(ctx.device)
    if not reads_feature_maps(net):
        return html.section("Grad-CAM of disagreements", [html.paragraph(GRADCAM_NEEDS_MAPS + ".", note=True)],
                            "gradcam")
    data = ctx.splits.test.subset(torch.as_tensor(chosen))
    x, _ = next(batches(data, ctx.splits.spec, len(chosen), train=False, shuffle=False, device=ctx.device))
    final_pred = torch.as_tensor(test.predictions[-1, chosen])
    ic_maps, ic_layer = gradcam(net, x, data.labels, 0)
    final_maps, final_layer = gradcam(net, x, final_pred, net.num_exits - 1)
    classes = ctx.splits.spec.classes
    captions = [(f"test #{i}: {classes[int(y)]}", f"IC 1 says {classes[int(y)]}", f"final says {classes[int(p)]}")
                for i, y, p in zip(chosen, data.labels, final_pred)]
    columns = ("image\n(true class)", "Grad-CAM\nof IC 1", "Grad-CAM\nof the final head")
    ctx.summary["gradcam"].update({"seed": ctx.seed, "ic_layer": ic_layer, "final_layer": final_layer})
    parts = [
        html.paragraph(f"{found.size} test samples are right at IC 1 and wrong at the final head; {chosen.size} of "
                       f"them, drawn at random (seed {ctx.seed}) and balanced over their true classes, are shown. "
                       f"Each map explains the class that head predicts. IC 1: {ic_layer}. Final head: {final_layer}."),
        ctx.add_figure("gradcam", plots.gradcam_grid(data.images.numpy(), ic_maps, final_maps, captions, columns),
                       "One sample per row: the image, Grad-CAM of IC 1 (right), Grad-CAM of the final head (wrong); "
                       "each caption is under its image."),
    ]
    return html.section("Grad-CAM of disagreements", parts, "gradcam")


def _examples(ctx: ReportContext, per_exit: int) -> list[str]:
    """Up to ``per_exit`` test images per earliest correct exit, drawn at random and balanced over classes: one
    titled row per exit, each image captioned with its true class (and the final head's answer in 'none')."""
    test = ctx.outputs["test"]
    earliest = earliest_correct_exit(test.correct)
    classes = ctx.splits.spec.classes
    scale = max(1, 64 // ctx.splits.spec.input_size)
    parts = [html.paragraph(f"Test images grouped by their earliest correct exit: up to {per_exit} per exit, drawn "
                            f"at random (seed {ctx.seed}) and balanced over their true classes.")]
    shown = {}
    for exit_index, name in zip([*range(ctx.num_exits), -1], [*ctx.exit_names, "none"]):
        candidates = np.flatnonzero(earliest == exit_index)
        picked = ctx.sample(candidates, per_exit, f"examples {name}")
        shown[name] = picked.tolist()
        captions = [f"true: {classes[test.labels[i]]}" for i in picked]
        if exit_index < 0:
            captions = [f"{c}\nfinal: {classes[test.predictions[-1, i]]}" for c, i in zip(captions, picked)]
        images = [(plots.image_png(ctx.splits.test.images[i].numpy(), scale), c) for i, c in zip(picked, captions)]
        title = (f"{name}: first correct here ({candidates.size} images)" if exit_index >= 0 else
                 f"none: no exit is correct ({candidates.size} images)")
        parts.append(html.gallery(title, images))
    ctx.summary["examples"] = {"seed": ctx.seed, "shown": shown}
    return parts
