"""Scoring stage outputs against a dataset's ground truth (the metrics are :mod:`.metrics`).

Predictions are joined with the ground truth by ``file_name``. Every function takes the dataset
(:class:`maskdistill.data.Dataset`) and the images to score; none reads a prediction file.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from maskdistill.coco_files import annotation_mask
from maskdistill.data import Dataset, ImageRecord
from maskdistill.masks import mask_annotation, paint_label_map
from maskdistill.metrics import box_class, confusion_matrix, corloc_hit, match_labels
from maskdistill.progress import Progress
from maskdistill.provenance import provenance


def report(title: str, splits: Sequence[str] | None, num_images: int, dataset: dict) -> dict:
    """The fields every metrics JSON shares (data/README.md, "Metrics JSON")."""
    return {
        "title": title,
        "split": " ".join(splits or []),
        "num_images": num_images,
        "summary": {},
        "dataset": dataset,
        "provenance": provenance(),
    }


def gt_boxes(dataset: Dataset, record: ImageRecord) -> tuple[np.ndarray, list[int]]:
    """Ground-truth boxes (M, 4) as (x, y, w, h) and their class labels 1..C."""
    boxes = dataset.boxes(record)
    coords = np.array([(b.x, b.y, b.w, b.h) for b in boxes], dtype=float).reshape(-1, 4)
    return coords, [b.label for b in boxes]


@dataclass
class CorLoc:
    """CorLoc of one box per image: ``hits / scored``."""

    hits: int
    scored: int
    missing: list[str]  # images without a predicted box (counted as misses)
    without_boxes: list[str]  # images without a ground-truth box (not scored)

    @property
    def value(self) -> float:
        return self.hits / self.scored


def corloc(
    dataset: Dataset, records: Sequence[ImageRecord], boxes: Mapping[str, Sequence[int]]
) -> CorLoc:
    """CorLoc of ``boxes`` (file name -> (x, y, w, h)) over ``records``.

    Raises ValueError when no image has a ground-truth box.
    """
    hits, missing, without_boxes = 0, [], []
    with Progress(len(records), "CorLoc", "images") as bar:
        for record in records:
            coords, _ = gt_boxes(dataset, record)
            if not len(coords):
                without_boxes.append(record.file_name)
            elif record.file_name not in boxes:
                missing.append(record.file_name)
            else:
                hits += corloc_hit(boxes[record.file_name], coords)
            bar.update()
    scored = len(records) - len(without_boxes)
    if not scored:
        raise ValueError(f"{dataset.image_root}: no image to score has a ground-truth box")
    return CorLoc(hits, scored, missing, without_boxes)


def pseudo_label_map(
    annotations: Mapping[str, dict], record: ImageRecord, source: str
) -> np.ndarray:
    """The stage-2 label map of an image: its one mask painted with its category id (1 +
    cluster index) on 0, all 0 when it has no annotation; (H, W) int32."""
    ann = annotations.get(record.file_name)
    masks = [] if ann is None else [(annotation_mask(ann, record, source), ann["category_id"])]
    return paint_label_map((record.height, record.width), masks)


def stored_naming(report: Mapping[str, Any], num_labels: int, source: str) -> np.ndarray:
    """The label -> class index naming a stage-2 metrics JSON of the objects protocol holds
    (``naming``, background first), checked to cover ``num_labels`` labels."""
    naming = report.get("naming")
    if report.get("matching") != "objects" or naming is None:
        raise ValueError(
            f"{source}: not a stage-2 metrics JSON of the objects protocol (evaluate cluster "
            "--matching objects)"
        )
    if len(naming) != num_labels:
        raise ValueError(f"{source}: names {len(naming)} labels, the predictions have {num_labels}")
    return np.asarray(naming, dtype=np.int64)


def semantic_confusion(
    dataset: Dataset,
    records: Iterable[ImageRecord],
    label_map: Callable[[ImageRecord], np.ndarray],
    num_labels: int,
    desc: str = "mIoU",
) -> tuple[np.ndarray, int]:
    """The pixel confusion matrix (C + 1, num_labels) of predicted label maps, and images scored.

    Args:
        label_map: the (H, W) predicted labels 0..num_labels - 1 of an image.
        num_labels: K' + 1 (background and the predicted labels).

    Images without semantic ground truth are left out.
    """
    records = list(records)
    num_classes = 1 + len(dataset.class_names)
    confusion = np.zeros((num_classes, num_labels), np.int64)
    scored = 0
    with Progress(len(records), desc, "images") as bar:
        for record in records:
            gt = dataset.semantic_labels(record)
            bar.update()
            if gt is None:
                continue
            pred = label_map(record)
            if gt.shape != pred.shape:
                raise ValueError(
                    f"{record.file_name}: ground truth {gt.shape}, prediction {pred.shape}"
                )
            confusion += confusion_matrix(gt, pred, num_classes, num_labels)
            scored += 1
    return confusion, scored


def object_pairs(
    dataset: Dataset, records: Iterable[ImageRecord], annotations: Mapping[str, dict]
) -> tuple[list[int], list[int]]:
    """(cluster index, class index 0..C-1) of every annotated image with ground-truth boxes.

    A mask's class is the class of the ground-truth box with the highest IoU with its box.
    """
    clusters, classes = [], []
    for record in records:
        ann = annotations.get(record.file_name)
        coords, labels = gt_boxes(dataset, record)
        if ann is not None and labels:
            clusters.append(ann["category_id"] - 1)
            classes.append(box_class(ann["bbox"], coords, labels) - 1)
    return clusters, classes


def object_label_mapping(
    dataset: Dataset, annotations: Mapping[str, dict], num_clusters: int, source: str
) -> np.ndarray:
    """Class of every label (0 background, k + 1 cluster k) from the object-level matching.

    The dataset's images vote: each annotated image's cluster against the class of its
    best-overlapping ground-truth box; Hungarian when K' <= C, majority vote when K' > C (as
    the reference's clustering script). Returns int64 (K' + 1,).
    """
    clusters, classes = object_pairs(dataset, dataset.records(), annotations)
    if not clusters:
        raise ValueError(f"{source}: no annotated image of the matching images has a box")
    counts = confusion_matrix(
        np.array(classes), np.array(clusters), len(dataset.class_names), num_clusters
    )
    return np.concatenate([[0], match_labels(counts) + 1])


def instance_ground_truth(dataset: Dataset, records: Sequence[ImageRecord]) -> dict[str, Any]:
    """The class-agnostic instance ground truth of ``records`` as a COCO dict.

    Every ground-truth instance mask becomes one annotation of the single category 1
    ("object"); image ids are the records' positions.
    """
    images, annotations = [], []
    for image_id, record in enumerate(records):
        images.append(
            {
                "id": image_id,
                "file_name": record.file_name,
                "height": record.height,
                "width": record.width,
            }
        )
        for mask, _ in dataset.instance_masks(record):
            annotations.append(
                mask_annotation(
                    mask, annotation_id=len(annotations) + 1, image_id=image_id, category_id=1
                )
            )
    categories = [{"id": 1, "name": "object", "supercategory": "object"}]
    return {"images": images, "annotations": annotations, "categories": categories}


def mask_ap50(ground_truth: Mapping[str, Any], predictions: Iterable[Mapping[str, Any]]) -> float:
    """Class-agnostic mask AP at IoU 0.5 (pycocotools COCOeval, segm, up to 100 per image).

    Args:
        ground_truth: from :func:`instance_ground_truth`.
        predictions: COCO results entries; joined to the ground truth by ``file_name`` (their
            ``image_id`` and ``category_id`` are replaced); images the ground truth lacks are
            left out.

    Returns:
        AP50 in [0, 1]; 0 without predictions.
    """
    ids = {image["file_name"]: image["id"] for image in ground_truth["images"]}
    results = [
        {**p, "image_id": ids[p["file_name"]], "category_id": 1}
        for p in predictions
        if p["file_name"] in ids
    ]
    if not results or not ground_truth["annotations"]:
        return 0.0
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        gt = COCO()
        gt.dataset = {k: list(v) for k, v in ground_truth.items()}
        gt.createIndex()
        evaluator = COCOeval(gt, gt.loadRes(results), iouType="segm")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return float(max(evaluator.stats[1], 0.0))  # stats[1]: AP at IoU 0.50, all areas
