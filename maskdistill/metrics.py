"""Evaluation metrics shared by every stage (pure functions on arrays, no file I/O).

- Unsupervised semantic segmentation: a confusion matrix accumulated image by image over valid
  pixels (ground truth 255 ignored), predicted labels matched to ground-truth classes (Hungarian
  on pixel counts, or majority vote when there are more predicted labels than classes), mIoU and
  per-class IoU.
- Object level: cluster accuracy (same matching on a cluster x class contingency table), NMI, ARI.
- Object discovery: CorLoc (predicted box IoU >= 0.5 with any ground-truth box).
- Metrics reports (JSON-ready dicts) rendered as Markdown tables.

Conventions: boxes are (x, y, w, h) in pixels with exclusive ends (the box covers columns
x .. x + w - 1), as ``maskdistill.data.GTBox`` and the discover shards store them. Scores are
fractions in [0, 1]; the Markdown tables show percentages.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from maskdistill.masks import IGNORE

CORLOC_IOU = 0.5


def confusion_matrix(
    gt: np.ndarray, pred: np.ndarray, num_classes: int, num_labels: int
) -> np.ndarray:
    """Pixel counts of one image: int64 (num_classes, num_labels), rows GT, columns predictions.

    Args:
        gt: (H, W) ground-truth classes in 0 .. num_classes - 1, or 255 (ignored).
        pred: (H, W) predicted labels in 0 .. num_labels - 1.

    Sum the matrices of all images (streaming) and pass the total to :func:`semantic_scores`.
    """
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} differ in shape")
    valid = gt != IGNORE
    gt = gt[valid].astype(np.int64)
    pred = pred[valid].astype(np.int64)
    if gt.size and (gt.min() < 0 or gt.max() >= num_classes):
        raise ValueError(f"ground-truth class {gt.max()} outside 0..{num_classes - 1} (or 255)")
    if pred.size and (pred.min() < 0 or pred.max() >= num_labels):
        raise ValueError(f"predicted label {pred.max()} outside 0..{num_labels - 1}")
    counts = np.bincount(gt * num_labels + pred, minlength=num_classes * num_labels)
    return counts.reshape(num_classes, num_labels)


def match_labels(counts: np.ndarray) -> np.ndarray:
    """The ground-truth class of every predicted label: int64 (K,), from counts (C, K).

    ``counts[c, k]`` is how often label k falls on class c. With K <= C the Hungarian algorithm
    matches labels to classes one to one, maximising the matched counts (classes left over match
    no label); with K > C (over-clustering) each label takes its most frequent class (majority
    vote), so several labels may map to one class.
    """
    counts = np.asarray(counts)
    num_classes, num_labels = counts.shape
    if num_labels > num_classes:
        return counts.argmax(axis=0).astype(np.int64)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    mapping = np.empty(num_labels, dtype=np.int64)
    mapping[cols] = rows
    return mapping


def merge_labels(counts: np.ndarray, mapping: np.ndarray) -> np.ndarray:
    """Counts (C, K) with each label's column added to its class's: (C, C), rows GT."""
    counts = np.asarray(counts)
    num_classes = counts.shape[0]
    onehot = np.zeros((counts.shape[1], num_classes), dtype=counts.dtype)
    onehot[np.arange(counts.shape[1]), mapping] = 1
    return counts @ onehot


def semantic_scores(
    confusion: np.ndarray, class_names: Sequence[str], mapping: np.ndarray | None = None
) -> dict[str, Any]:
    """mIoU, per-class IoU and the label matching from a summed confusion matrix (C, K).

    Labels are matched to classes by :func:`match_labels`, unless ``mapping`` (int (K,), the
    class of each label) is given. IoU of class c = TP / (TP + FP + FN) after matching; a class
    absent from both ground truth and matched predictions has no IoU (null) and is left out of
    the mean.

    Returns:
        {"miou", "pixel_accuracy", "per_class_iou": {name: iou | None},
         "matching": {label: class name}, "num_pixels", "confusion": the (C, K) counts}.
    """
    confusion = np.asarray(confusion, dtype=np.int64)
    if confusion.shape[0] != len(class_names):
        raise ValueError(f"{confusion.shape[0]} confusion rows but {len(class_names)} class names")
    if mapping is None:
        mapping = match_labels(confusion)
    elif len(mapping) != confusion.shape[1]:
        raise ValueError(
            f"mapping has {len(mapping)} labels, the confusion matrix {confusion.shape[1]}"
        )
    merged = merge_labels(confusion, mapping)
    tp = np.diag(merged).astype(np.float64)
    union = merged.sum(axis=0) + merged.sum(axis=1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
    total = int(confusion.sum())
    return {
        "miou": float(np.nanmean(iou)) if np.isfinite(iou).any() else None,
        "pixel_accuracy": float(tp.sum() / total) if total else None,
        "per_class_iou": {
            name: (None if np.isnan(v) else float(v))
            for name, v in zip(class_names, iou, strict=True)
        },
        "matching": {str(k): class_names[c] for k, c in enumerate(mapping)},
        "num_pixels": total,
        "confusion": confusion.tolist(),
    }


def box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """IoU of every pair of boxes: float64 (N, M) from (N, 4) and (M, 4) boxes (x, y, w, h).

    Exclusive ends: the intersection of two boxes is computed on [x, x + w) x [y, y + h).
    Empty boxes (w or h = 0) have IoU 0 with everything.
    """
    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 0] + a[:, None, 2], b[None, :, 0] + b[None, :, 2])
    y1 = np.minimum(a[:, None, 1] + a[:, None, 3], b[None, :, 1] + b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def corloc_hit(box: Sequence[float], gt_boxes: np.ndarray) -> bool:
    """True when ``box`` (x, y, w, h) has IoU >= 0.5 with at least one of ``gt_boxes`` (M, 4).

    Every ground-truth box counts, VOC ``difficult`` ones included (as LOST does).
    """
    gt_boxes = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    return bool(gt_boxes.size) and bool(box_iou(np.asarray(box), gt_boxes).max() >= CORLOC_IOU)


def box_class(box: Sequence[float], gt_boxes: np.ndarray, gt_labels: Sequence[int]) -> int:
    """The label of the ground-truth box (M, 4) with the highest IoU with ``box`` (x, y, w, h).

    Ties go to the first box. Raises ValueError when there is no ground-truth box.
    """
    if len(gt_labels) == 0:
        raise ValueError("no ground-truth box to take the class from")
    return int(gt_labels[int(box_iou(np.asarray(box), gt_boxes)[0].argmax())])


def cluster_scores(
    clusters: np.ndarray, classes: np.ndarray, num_clusters: int, class_names: Sequence[str]
) -> dict[str, Any]:
    """Cluster accuracy, NMI and ARI of per-object cluster ids against ground-truth classes.

    Args:
        clusters: (N,) cluster ids in 0 .. num_clusters - 1.
        classes: (N,) class indices in 0 .. len(class_names) - 1.

    Accuracy matches clusters to classes as :func:`match_labels` does (Hungarian when
    K <= C, majority vote when K > C). NMI uses the arithmetic mean normalisation
    (scikit-learn's default).
    """
    clusters = np.asarray(clusters, dtype=np.int64)
    classes = np.asarray(classes, dtype=np.int64)
    num_classes = len(class_names)
    if clusters.shape != classes.shape or clusters.ndim != 1:
        raise ValueError(f"clusters {clusters.shape} and classes {classes.shape} must be (N,)")
    if clusters.size == 0:
        raise ValueError("no object to score")
    counts = confusion_matrix(classes, clusters, num_classes, num_clusters)
    mapping = match_labels(counts)
    correct = counts[mapping, np.arange(num_clusters)].sum()
    return {
        "accuracy": float(correct / clusters.size),
        "nmi": float(normalized_mutual_info_score(classes, clusters)),
        "ari": float(adjusted_rand_score(classes, clusters)),
        "matching": {str(k): class_names[c] for k, c in enumerate(mapping)},
        "num_objects": int(clusters.size),
    }


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def markdown_cell(value: Any) -> str:
    """``str(value)`` made safe for one Markdown table cell: line breaks become spaces, ``|``
    and ``\\`` are escaped (names from data may hold them)."""
    text = " ".join(str(value).splitlines())
    return text.replace("\\", "\\\\").replace("|", "\\|")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table; cells are converted by :func:`markdown_cell`."""
    lines = ["| " + " | ".join(map(markdown_cell, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(markdown_cell(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


MATCHING_NOTE = (
    "Label matching: *pixels* matches each stage's labels to the classes on its own pixel "
    "confusion matrix (Hungarian; majority vote when over-clustering); *objects* names every "
    "cluster once, by stage 2's object-level matching over the learning images, and scores "
    "every stage with that naming (the reference's protocol)."
)


def metrics_markdown(reports: Sequence[Mapping[str, Any]]) -> str:
    """Render metrics reports as Markdown: one summary table, one per-class IoU table.

    Each report is a metrics JSON (data/README.md, "Metrics JSON"): ``title``, ``split``,
    ``num_images``, ``summary`` {metric name: fraction or null} and optionally
    ``per_class_iou`` {class name: fraction or null}. Values are shown in percent.
    """
    rows = [
        (
            report["title"],
            name,
            _percent(value),
            report.get("split", ""),
            report["num_images"],
            report.get("matching", ""),
        )
        for report in reports
        for name, value in report["summary"].items()
    ]
    header = ("stage", "metric", "%", "split", "images", "label matching")
    text = "## Summary\n\n" + markdown_table(header, rows)
    text += f"\n{MATCHING_NOTE}\n"
    with_classes = [report for report in reports if report.get("per_class_iou")]
    if with_classes:
        names = list(with_classes[0]["per_class_iou"])
        class_rows = [
            (name, *(_percent(r["per_class_iou"].get(name)) for r in with_classes))
            for name in names
        ]
        header = ("class", *(f"{r['title']} IoU %" for r in with_classes))
        text += "\n## Per-class IoU\n\n" + markdown_table(header, class_rows)
    return text


def ablation_rows(
    reports: Sequence[Mapping[str, Any]], paper: Mapping[str, float] | None = None
) -> list[dict[str, Any]]:
    """The ablation table's rows: every report with an mIoU, in order, beside the paper's.

    Each row: ``title``, ``split``, ``num_images``, ``miou`` (fraction), ``paper`` (the paper's
    mIoU in percent for that title, or None), ``per_class_iou``. The last CRF round scored with
    CRF is the paper's "stage 5 with CRF rounds" row.
    """
    titles = [r["title"] for r in reports]
    rounds = [t for t in titles if ", CRF round" in t and t.endswith(" with CRF")]
    rows = []
    for report in reports:
        miou = report["summary"].get("mIoU")
        if miou is None and "mIoU" not in report["summary"]:
            continue
        key = report["title"]
        if rounds and key == rounds[-1]:
            key = "stage 5 with CRF rounds"
        rows.append(
            {
                "title": report["title"],
                "split": report.get("split", ""),
                "num_images": report["num_images"],
                "miou": miou,
                "matching": report.get("matching", ""),
                "paper": None if paper is None else paper.get(key),
                "per_class_iou": report.get("per_class_iou", {}),
            }
        )
    return rows


def comparison_markdown(setting: str, runs: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    """One row per run (``{value of the setting: its ablation rows}``, in order), one column per
    stage title with an mIoU (in the order first seen), values in percent."""
    titles = list(dict.fromkeys(row["title"] for rows in runs.values() for row in rows))
    body = []
    for value, rows in runs.items():
        miou = {row["title"]: row["miou"] for row in rows}
        body.append([value, *(_percent(miou.get(title)) for title in titles)])
    header = [setting, *(f"{title} mIoU %" for title in titles)]
    return "## mIoU of every stage per run\n\n" + markdown_table(header, body)


def ablation_markdown(rows: Sequence[Mapping[str, Any]], paper_name: str | None) -> str:
    """The ablation table (and its per-class IoU) as Markdown, values in percent."""
    header = ["row", "split", "images", "label matching", "mIoU %"] + (
        [f"paper ({paper_name}) %"] if paper_name else []
    )
    body = []
    for row in rows:
        cells = [row["title"], row["split"], row["num_images"], row.get("matching", "")]
        cells.append(_percent(row["miou"]))
        if paper_name:
            cells.append("" if row["paper"] is None else f"{row['paper']:.1f}")
        body.append(cells)
    text = "## Ablation: semantic mIoU of every stage\n\n" + markdown_table(header, body)
    text += f"\n{MATCHING_NOTE}\n"
    names = list(rows[0]["per_class_iou"]) if rows else []
    if names:
        class_rows = [
            (name, *(_percent(r["per_class_iou"].get(name)) for r in rows)) for name in names
        ]
        header = ("class", *(r["title"] for r in rows))
        text += "\n## Per-class IoU %\n\n" + markdown_table(header, class_rows)
    return text
