"""The report's figures, drawn with matplotlib's Agg canvas (no display, no pyplot state) as PNG bytes."""

from __future__ import annotations

import io
from itertools import cycle
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

ACCENT, SECOND, MUTED = "#1f77b4", "#d62728", "#7f7f7f"
CURVE_COLORS = (ACCENT, "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
MARKERS = ("o", "D", "^", "v", "P", "X", "h", "<", ">", "p")
LABEL_FONTSIZE = 8  # of the numbers beside chosen points, in points
LABEL_GAP = (30, 14)  # pixels right or left of and above or below its point where a number starts
MARKER_RADIUS = 6  # pixels: half the width of a chosen point's marker, which no number covers
COST_AXIS = "cost (% of the backbone's FLOPs)"


def png_bytes(fig: Figure) -> bytes:
    """The figure encoded as PNG."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def accuracy_cost_plot(names: Sequence[str], relative_cost: Sequence[float],
                       accuracy: dict[str, Sequence[float]]) -> bytes:
    """Accuracy of every exit against its cost relative to the backbone, one line per split."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 3.6))
    ax = fig.add_subplot()
    cost = np.asarray(relative_cost) * 100
    for (split, values), color in zip(accuracy.items(), (ACCENT, SECOND, MUTED)):
        ax.plot(cost, np.asarray(values) * 100, "o-", color=color, label=split)
    for name, x, y in zip(names, cost, next(iter(accuracy.values()))):
        ax.annotate(name, (x, y * 100), textcoords="offset points", xytext=(4, -12), fontsize=8)
    ax.set(xlabel=COST_AXIS, ylabel="accuracy (%)", title="Accuracy of every exit")
    ax.grid(alpha=0.3)
    ax.legend()
    return png_bytes(fig)


def tradeoff_plot(curves: Sequence[tuple[str, Sequence[float], Sequence[float]]], oracle: tuple[float, float],
                  final: tuple[float, float], chosen: Sequence[tuple[str, tuple[float, float]]] = ()) -> bytes:
    """:func:`tradeoff_figure` as PNG."""
    return png_bytes(tradeoff_figure(curves, oracle, final, chosen))


def tradeoff_figure(curves: Sequence[tuple[str, Sequence[float], Sequence[float]]], oracle: tuple[float, float],
                    final: tuple[float, float], chosen: Sequence[tuple[str, tuple[float, float]]] = ()) -> Figure:
    """Early-exit accuracy/cost curves ((label, cost fractions, accuracies) each) with the final head alone, the
    oracle and every chosen threshold ((label, (cost fraction, accuracy)) each), marked and numbered in order:
    each number in a box of its own, joined to its point by a line, however close the points lie."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 3.6))
    ax = fig.add_subplot()
    for (label, cost, accuracy), color in zip(curves, cycle(CURVE_COLORS)):
        ax.plot(np.asarray(cost) * 100, np.asarray(accuracy) * 100, "-", color=color, label=label)
    ax.plot(*_percent(final), "s", color=MUTED, markersize=8, label="final head alone")
    ax.plot(*_percent(oracle), "*", color=SECOND, markersize=13, label="oracle")
    for number, ((label, point), marker) in enumerate(zip(chosen, cycle(MARKERS)), 1):
        ax.plot(*_percent(point), marker, color="black", markerfacecolor="none", markersize=8,
                label=f"{number}: {label}")
    ax.set(xlabel=f"average {COST_AXIS}", ylabel="accuracy (%)", title="Early exit: accuracy against cost")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=8)
    _number_points(ax, [_percent(point) for _, point in chosen])
    return fig


def _number_points(ax: Axes, points: Sequence[tuple[float, float]]) -> None:
    """Write 1, 2, ... beside ``points`` (data coordinates), no number over another or over a point: each starts
    below right of its point (above in the axes' lower half, left in their right fifth, next to the legend) and
    moves on up or down past the numbers already written (those of the points ahead of it that way), a thin line
    joining it to its point."""
    if not points:
        return
    ax.set(xlim=ax.get_xlim(), ylim=ax.get_ylim())  # fixed now, so pixel positions stay as computed
    pixels = ax.transData.transform(np.asarray(points, dtype=float))
    middle, right = ax.transAxes.transform((0.5, 0.5))[1], ax.transAxes.transform((0.8, 0))[0]
    per_point = 72 / ax.figure.dpi
    box_height = LABEL_FONTSIZE / per_point + 4
    obstacles = [(xy, np.array([MARKER_RADIUS, MARKER_RADIUS])) for xy in pixels]
    steps = np.where(pixels[:, 1] < middle, 1.0, -1.0)  # up from the lower half, down from the upper
    sides = np.where(pixels[:, 0] > right, -1.0, 1.0)
    rows = np.round(pixels[:, 1] / box_height)  # points less than a number's height apart count as level: in order
    for i in sorted(range(len(points)), key=lambda i: (steps[i], steps[i] * rows[i], i)):
        half = np.array([(0.6 * len(str(i + 1)) * LABEL_FONTSIZE / per_point + 4) / 2, box_height / 2])
        centre = pixels[i] + np.array([sides[i] * LABEL_GAP[0], steps[i] * LABEL_GAP[1]])
        while any((np.abs(centre - xy) < half + size).all() for xy, size in obstacles):
            centre[1] += steps[i] * 2
        obstacles.append((centre, half))
        ax.annotate(str(i + 1), points[i], xytext=tuple((centre - pixels[i]) * per_point), textcoords="offset points",
                    ha="center", va="center", fontsize=LABEL_FONTSIZE,
                    bbox={"boxstyle": "square,pad=0.1", "facecolor": "white", "edgecolor": "none", "alpha": 0.85},
                    arrowprops={"arrowstyle": "-", "color": MUTED, "linewidth": 0.6, "shrinkA": 0, "shrinkB": 4})


def earliest_exit_plot(names: Sequence[str], shares: Sequence[float], none_share: float) -> bytes:
    """Share of samples whose earliest correct exit is each exit (and none)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 3.2))
    ax = fig.add_subplot()
    labels = [*names, "none"]
    values = np.asarray([*shares, none_share]) * 100
    colors = [ACCENT] * (len(names) - 1) + [MUTED, SECOND]
    bars = ax.bar(labels, values, color=colors)
    ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.set(ylabel="samples (%)", title="Earliest correct exit (wasteful effect)")
    ax.tick_params(axis="x", labelsize=8, rotation=20)
    return png_bytes(fig)


def destructive_plot(names: Sequence[str], counts: Sequence[int], confidences: Sequence[float | None]) -> bytes:
    """Per IC, how many of the final head's mistakes it gets right, labelled with its mean confidence."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 3.2))
    ax = fig.add_subplot()
    bars = ax.bar(names, counts, color=SECOND)
    labels = [f"{c}\n{p:.2f}" if p is not None else f"{c}" for c, p in zip(counts, confidences)]
    ax.bar_label(bars, labels=labels, fontsize=8)
    ax.set(ylabel="final-head mistakes it gets right",
           title="Destructive effect (bar labels: count, mean confidence)")
    ax.margins(y=0.25)
    ax.tick_params(axis="x", labelsize=8, rotation=20)
    return png_bytes(fig)


def confusion_histogram(histogram: Mapping[str, Sequence[float]], groups: Mapping[str, str], title: str,
                        xlabel: str) -> bytes:
    """Histograms of the normalised confusion of two groups of samples, each as a share of its group.

    ``histogram`` holds the shared bin ``edges`` and each group's counts (as
    :func:`shallowdeep.analysis.confusion_detector` writes them); ``groups`` maps its keys to legend labels.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 3.4))
    ax = fig.add_subplot()
    edges = np.asarray(histogram["edges"])
    for (group, label), color in zip(groups.items(), (ACCENT, SECOND)):
        counts = np.asarray(histogram[group], dtype=float)
        share = counts / counts.sum() * 100 if counts.sum() else counts
        ax.stairs(share, edges, fill=True, alpha=0.45, color=color, label=f"{label} ({int(counts.sum())})")
    ax.set(xlabel=xlabel, ylabel="share of the group (%)", title=title)
    ax.legend()
    return png_bytes(fig)


def image_grid(rows: Sequence[Sequence[np.ndarray]], row_labels: Sequence[str],
               captions: Sequence[Sequence[str]]) -> bytes:
    """Rows of uint8 (C, H, W) images (grey or RGB), each row labelled on its left and each image captioned just
    below it."""
    from matplotlib.figure import Figure

    columns = max((len(r) for r in rows), default=1) or 1
    fig = Figure(figsize=(1.5 * columns + 1.2, 1.5 * len(rows)))
    axes = fig.subplots(len(rows), columns, squeeze=False)
    for r, (images, label) in enumerate(zip(rows, row_labels)):
        for c in range(columns):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(images):
                _show(ax, images[c])
                ax.set_xlabel(captions[r][c], fontsize=8, labelpad=2)
            else:
                ax.axis("off")
        axes[r][0].set_ylabel(label, fontsize=9, rotation=0, ha="right", va="center")
        if not images:
            axes[r][0].axis("on")
            axes[r][0].set_frame_on(False)
            axes[r][0].text(0.5, 0.5, "no sample", ha="center", va="center", fontsize=8, color=MUTED)
    fig.subplots_adjust(hspace=0.45, wspace=0.3)
    return png_bytes(fig)


def image_png(image: np.ndarray, scale: int = 1) -> bytes:
    """One uint8 (C, H, W) image (grey or RGB) as PNG, each pixel repeated ``scale`` times along both axes."""
    from PIL import Image

    pixels = _hwc(image).repeat(scale, axis=0).repeat(scale, axis=1)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def gradcam_grid(images: Sequence[np.ndarray], ic_maps: np.ndarray, final_maps: np.ndarray,
                 captions: Sequence[tuple[str, str, str]], columns: tuple[str, str, str]) -> bytes:
    """Per sample, one row: the image, the IC's Grad-CAM and the final head's Grad-CAM overlaid on it.

    ``columns`` titles the three columns once, above the first row; ``captions`` holds each sample's
    (image, IC, final) captions, written just below its three images.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 2.2 * len(images)))
    axes = fig.subplots(len(images), 3, squeeze=False)
    for row, image, ic_map, final_map, texts in zip(axes, images, ic_maps, final_maps, captions):
        for ax, heat, text in zip(row, (None, ic_map, final_map), texts):
            _show(ax, image)
            if heat is not None:
                ax.imshow(heat, cmap="jet", alpha=0.45, vmin=0, vmax=1, interpolation="bilinear")
            ax.set_xlabel(text, fontsize=8, labelpad=2)
            ax.set_xticks([])
            ax.set_yticks([])
    for ax, title in zip(axes[0], columns):
        ax.set_title(title, fontsize=8, fontweight="bold")
    fig.subplots_adjust(hspace=0.35)
    return png_bytes(fig)


def _show(ax, image: np.ndarray) -> None:
    """Draw a uint8 (C, H, W) image on ``ax``, pixel for pixel: grey levels as they are when C is 1."""
    pixels = _hwc(image)
    grey = {"cmap": "gray", "vmin": 0, "vmax": 255} if pixels.ndim == 2 else {}
    ax.imshow(pixels, interpolation="nearest", **grey)


def _hwc(image: np.ndarray) -> np.ndarray:
    """A (C, H, W) image as (H, W, C), or (H, W) when it is grey (C = 1)."""
    pixels = np.asarray(image)
    return np.ascontiguousarray(pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0))


def _percent(point: tuple[float, float]) -> tuple[float, float]:
    return point[0] * 100, point[1] * 100
