"""Plots of a run (matplotlib, no display): each function returns an (H, W, 3) uint8 RGB array.

mIoU per stage (with the paper's numbers when given), per-class IoU per stage, the confusion
between clusters and classes after matching, cluster sizes, the distribution of Mask R-CNN
scores with the selection threshold, and training curves from metrics logs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: render to arrays
# names come from data (class names, run names): never read "$...$" in them as mathtext
matplotlib.rcParams["text.parse_math"] = False

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

DPI = 100


def _rendered(figure: plt.Figure) -> np.ndarray:
    """The figure as an RGB array; the figure is closed."""
    figure.tight_layout()
    figure.canvas.draw()
    rgb = np.asarray(figure.canvas.buffer_rgba())[:, :, :3].copy()
    plt.close(figure)
    return rgb


def miou_bars(rows: Sequence[tuple[str, float | None, float | None]]) -> np.ndarray:
    """Bars of (title, our mIoU fraction, the paper's mIoU in percent or None) per stage."""
    figure, axes = plt.subplots(figsize=(max(4, 1.3 * len(rows)), 3.2), dpi=DPI)
    x = np.arange(len(rows))
    ours = [100 * (r[1] or 0) for r in rows]
    axes.bar(x - 0.2, ours, width=0.4, label="this run")
    if any(r[2] is not None for r in rows):
        axes.bar(x + 0.2, [r[2] or 0 for r in rows], width=0.4, label="paper (VOC12 val)")
    for xi, value in zip(x, ours, strict=True):
        axes.text(xi - 0.2, value, f"{value:.1f}", ha="center", va="bottom", fontsize=8)
    axes.set_xticks(x, [r[0].replace(": ", ":\n") for r in rows], fontsize=7)
    axes.set_ylabel("mIoU %")
    axes.legend(fontsize=8)
    return _rendered(figure)


def per_class_bars(per_class: Mapping[str, Mapping[str, float | None]]) -> np.ndarray:
    """Grouped bars: per class, the IoU (fraction) of each stage (``{stage: {class: iou}}``)."""
    stages = list(per_class)
    classes = list(next(iter(per_class.values()))) if per_class else []
    figure, axes = plt.subplots(
        figsize=(max(5, 0.8 * len(classes) * len(stages) / 3), 3.2), dpi=DPI
    )
    width = 0.8 / max(len(stages), 1)
    for i, stage in enumerate(stages):
        values = [100 * (per_class[stage].get(c) or 0) for c in classes]
        axes.bar(np.arange(len(classes)) + i * width, values, width=width, label=stage)
    axes.set_xticks(np.arange(len(classes)) + 0.4 - width / 2, classes, rotation=45, fontsize=7)
    axes.set_ylabel("IoU %")
    axes.legend(fontsize=7)
    return _rendered(figure)


def confusion_heatmap(
    counts: np.ndarray, row_names: Sequence[str], column_names: Sequence[str]
) -> np.ndarray:
    """Row-normalised counts (e.g. ground-truth classes x matched labels) as a heat map."""
    counts = np.asarray(counts, dtype=float)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    figure, axes = plt.subplots(
        figsize=(1 + 0.45 * len(column_names), 1 + 0.4 * len(row_names)), dpi=DPI
    )
    image = axes.imshow(shares, cmap="viridis", vmin=0, vmax=1)
    axes.set_xticks(range(len(column_names)), column_names, rotation=60, fontsize=7)
    axes.set_yticks(range(len(row_names)), row_names, fontsize=7)
    axes.set_xlabel("predicted label (matched)")
    axes.set_ylabel("ground truth")
    figure.colorbar(image, ax=axes, fraction=0.046)
    return _rendered(figure)


def size_bars(sizes: Sequence[int], names: Sequence[str]) -> np.ndarray:
    """Bars of the number of masks per cluster."""
    figure, axes = plt.subplots(figsize=(max(4, 0.35 * len(sizes)), 3), dpi=DPI)
    axes.bar(range(len(sizes)), sizes)
    axes.set_xticks(range(len(names)), names, rotation=60, fontsize=7)
    axes.set_ylabel("masks")
    return _rendered(figure)


def score_histogram(scores: Sequence[float], tau: float) -> np.ndarray:
    """The distribution of prediction scores, the selection threshold ``tau`` marked."""
    figure, axes = plt.subplots(figsize=(5, 3), dpi=DPI)
    axes.hist(scores, bins=40, range=(0, 1))
    axes.axvline(tau, color="red", linestyle="--", label=f"tau = {tau}")
    axes.set_xlabel("score")
    axes.set_ylabel("predictions")
    axes.legend(fontsize=8)
    return _rendered(figure)


def setting_curves(
    setting: str, values: Sequence[str], series: Mapping[str, Sequence[float | None]]
) -> np.ndarray:
    """mIoU (fractions, plotted in percent) of each stage (``series``: title -> one value per
    run) against the runs' values of ``setting``: numbers on a numeric axis, else in order."""
    figure, axes = plt.subplots(figsize=(5.5, 3.4), dpi=DPI)
    try:
        x = [float(v) for v in values]
    except ValueError:
        x = list(range(len(values)))
        axes.set_xticks(x, list(values), fontsize=8)
    for title, points in series.items():
        shown = [(xi, 100 * p) for xi, p in zip(x, points, strict=True) if p is not None]
        if shown:
            axes.plot(*zip(*shown, strict=True), marker="o", linewidth=1, label=title)
    axes.set_xlabel(setting)
    axes.set_ylabel("mIoU %")
    axes.legend(fontsize=7)
    return _rendered(figure)


def training_curves(logs: Mapping[str, Sequence[Mapping[str, Any]]]) -> np.ndarray:
    """The ``loss`` (and learning rate) of each metrics log (``{name: records}``) per step."""
    figure, axes = plt.subplots(1, max(len(logs), 1), figsize=(4 * max(len(logs), 1), 3), dpi=DPI)
    for ax, (name, records) in zip(np.atleast_1d(axes), logs.items(), strict=False):
        steps = [r["step"] for r in records]
        ax.plot(steps, [r["loss"] for r in records], linewidth=1)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        if records and "lr" in records[0]:
            twin = ax.twinx()
            twin.plot(steps, [r["lr"] for r in records], color="grey", linewidth=0.8)
            twin.set_ylabel("lr", color="grey")
    return _rendered(figure)
