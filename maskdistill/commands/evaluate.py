"""Evaluate stage outputs against the dataset's ground truth (metrics JSON + Markdown table).

Subcommands:
  ``discovery``: CorLoc of the discover shards' mask boxes.
  ``cluster``: semantic mIoU of the stage-2 label maps (each image's mask painted with its
  category id = 1 + cluster index, background 0), labels matched to classes by Hungarian /
  majority vote on pixels (default) or, as the reference does, through the object-level
  matching (``--matching objects``); and the object-level cluster accuracy, NMI and ARI (a
  mask's class = class of the GT box with the highest IoU with the mask's box).
  ``table``: render metrics JSONs as one Markdown file.

Only the images of ``--splits`` (the evaluation split) are scored; predictions are joined with
the ground truth by file name.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from tqdm import tqdm

from maskdistill.commands.dataset_args import (
    add_dataset_arguments,
    dataset_spec,
    open_dataset_from_args,
)
from maskdistill.data import Dataset, ImageRecord, open_dataset
from maskdistill.io import atomic_path, read_json, write_json
from maskdistill.metrics import (
    box_class,
    cluster_scores,
    confusion_matrix,
    corloc_hit,
    match_labels,
    metrics_markdown,
    semantic_scores,
)
from maskdistill.provenance import provenance
from maskdistill.shards import read_shard_table

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="what", required=True, metavar="WHAT")
    discovery = sub.add_parser("discovery", help="CorLoc of the discovered masks")
    discovery.add_argument("--shards", nargs="+", required=True, help="discover shards")
    cluster = sub.add_parser("cluster", help="mIoU, cluster accuracy, NMI, ARI of stage 2")
    cluster.add_argument("--pseudo-gt", required=True, help="stage-2 COCO JSON (cluster)")
    cluster.add_argument(
        "--matching",
        choices=("pixels", "objects"),
        default="pixels",
        help="mIoU label matching: pixels (Hungarian / majority vote on the pixel confusion "
        "matrix) or objects (the reference's: each cluster takes the class the object-level "
        "cluster accuracy matches it to)",
    )
    cluster.add_argument(
        "--matching-splits",
        nargs="+",
        default=None,
        help="voc: splits whose boxes decide --matching objects (default: --splits; the "
        "reference uses its learning split, trainval)",
    )
    for command in (discovery, cluster):
        add_dataset_arguments(command)
        command.add_argument("--out", required=True, help="metrics JSON to write")
    discovery.set_defaults(_evaluate=evaluate_discovery)
    cluster.set_defaults(_evaluate=evaluate_cluster)
    table = sub.add_parser("table", help="render metrics JSONs as Markdown")
    table.add_argument("--reports", nargs="+", required=True, help="metrics JSONs, in order")
    table.add_argument("--out", required=True, help="Markdown file to write")
    table.set_defaults(_evaluate=write_table)


def run(args: argparse.Namespace) -> None:
    args._evaluate(args)


def _gt_boxes(dataset: Dataset, record: ImageRecord) -> tuple[np.ndarray, list[int]]:
    """Ground-truth boxes (M, 4) as (x, y, w, h) and their class labels 1..C."""
    boxes = dataset.boxes(record)
    coords = np.array([(b.x, b.y, b.w, b.h) for b in boxes], dtype=float).reshape(-1, 4)
    return coords, [b.label for b in boxes]


def _report(args: argparse.Namespace, title: str, records: list[ImageRecord]) -> dict[str, Any]:
    """Fields every metrics JSON shares (data/README.md, "Metrics JSON")."""
    return {
        "title": title,
        "split": " ".join(args.splits or []),
        "num_images": len(records),
        "summary": {},
        "dataset": dataset_spec(args),
        "provenance": provenance(),
    }


def _eval_dataset(args: argparse.Namespace) -> tuple[Dataset, list[ImageRecord]]:
    dataset = open_dataset_from_args(args)
    if not dataset.has_ground_truth:
        raise ValueError(f"{args.images}: the dataset has no ground truth to evaluate against")
    return dataset, dataset.records()


def evaluate_discovery(args: argparse.Namespace) -> None:
    """CorLoc over the evaluation images; images the shards lack count as misses."""
    dataset, records = _eval_dataset(args)
    boxes: dict[str, tuple[int, ...]] = {}
    for path in args.shards:
        table = read_shard_table(path, ("file_name", "box"))
        boxes.update(zip(table["file_name"], map(tuple, table["box"].tolist()), strict=True))
    hits, missing, without_boxes = 0, [], []
    for record in tqdm(records, desc="CorLoc", unit="image"):
        gt_boxes, _ = _gt_boxes(dataset, record)
        if not len(gt_boxes):
            without_boxes.append(record.file_name)
        elif record.file_name not in boxes:
            missing.append(record.file_name)
        else:
            hits += corloc_hit(boxes[record.file_name], gt_boxes)
    scored = len(records) - len(without_boxes)
    if not scored:
        raise ValueError(f"{args.images}: no image of split {args.splits} has a ground-truth box")
    report = _report(args, "stage 1: discover", records)
    report["summary"]["CorLoc"] = hits / scored
    report.update(
        num_scored=scored,
        num_hits=hits,
        missing=missing,
        without_boxes=without_boxes,
        shards=list(args.shards),
    )
    write_json(args.out, report)
    log.info("CorLoc %.1f%% over %d images (%d missing)", 100 * hits / scored, scored, len(missing))


def _index_annotations(path: str) -> tuple[dict[str, dict], int]:
    """file name -> the image's one annotation (or absent), and the number of categories."""
    coco = read_json(path)
    try:
        names = {image["id"]: image["file_name"] for image in coco["images"]}
        num_categories = len(coco["categories"])
        by_name: dict[str, dict] = {}
        for ann in coco["annotations"]:
            name = names[ann["image_id"]]
            if name in by_name:
                raise ValueError(f"{path}: image {name!r} has more than one annotation")
            if not 1 <= ann["category_id"] <= num_categories:
                raise ValueError(
                    f"{path}: annotation {ann['id']} has category_id {ann['category_id']}, "
                    f"expected 1..{num_categories} (1 + cluster index)"
                )
            by_name[name] = ann
        return by_name, num_categories
    except (KeyError, TypeError) as error:
        raise ValueError(f"{path}: not a COCO instances JSON ({error!r} missing)") from error


def _label_map(ann: dict | None, record: ImageRecord, source: str) -> np.ndarray:
    """(H, W) int64: the annotation's mask painted with its category id, 0 elsewhere."""
    labels = np.zeros((record.height, record.width), np.int64)
    if ann is None:
        return labels
    mask = mask_utils.decode(ann["segmentation"]).astype(bool)
    if mask.shape != labels.shape:
        raise ValueError(
            f"{source}: mask of {record.file_name!r} is {mask.shape}, the image {labels.shape}"
        )
    labels[mask] = ann["category_id"]
    return labels


def _object_pairs(
    dataset: Dataset, records: Iterable[ImageRecord], annotations: dict[str, dict]
) -> tuple[list[int], list[int]]:
    """(cluster index, class index 0..C-1) of every annotated image with GT boxes."""
    clusters, classes = [], []
    for record in records:
        ann = annotations.get(record.file_name)
        gt_boxes, labels = _gt_boxes(dataset, record)
        if ann is not None and labels:
            clusters.append(ann["category_id"] - 1)
            classes.append(box_class(ann["bbox"], gt_boxes, labels) - 1)
    return clusters, classes


def _object_label_mapping(
    args: argparse.Namespace, annotations: dict[str, dict], num_clusters: int
) -> np.ndarray:
    """Class of every label (0 background, k + 1 cluster k) from the object-level matching.

    The images of ``--matching-splits`` (default ``--splits``) vote: each annotated image's
    cluster against the class of its best-overlapping ground-truth box; Hungarian when
    K' <= C, majority vote when K' > C (as the reference's clustering script).
    """
    splits = args.matching_splits or args.splits
    dataset = open_dataset(dataset_spec(args), splits)
    clusters, classes = _object_pairs(dataset, dataset.records(), annotations)
    if not clusters:
        raise ValueError(f"{args.pseudo_gt}: no annotated image of splits {splits} has a box")
    counts = confusion_matrix(
        np.array(classes), np.array(clusters), len(dataset.class_names), num_clusters
    )
    return np.concatenate([[0], match_labels(counts) + 1])


def evaluate_cluster(args: argparse.Namespace) -> None:
    """Semantic mIoU of the painted stage-2 masks and object-level cluster scores."""
    dataset, records = _eval_dataset(args)
    annotations, num_clusters = _index_annotations(args.pseudo_gt)
    names = ("background", *dataset.class_names)
    confusion = np.zeros((len(names), num_clusters + 1), np.int64)
    with_labels = 0
    for record in tqdm(records, desc="mIoU", unit="image"):
        gt = dataset.semantic_labels(record)
        if gt is None:
            continue
        pred = _label_map(annotations.get(record.file_name), record, args.pseudo_gt)
        if gt.shape != pred.shape:
            raise ValueError(f"{record.file_name}: ground truth {gt.shape}, image {pred.shape}")
        confusion += confusion_matrix(gt, pred, len(names), num_clusters + 1)
        with_labels += 1
    report = _report(args, "stage 2: cluster", records)
    mapping = None
    if args.matching == "objects":
        mapping = _object_label_mapping(args, annotations, num_clusters)
    semantic = semantic_scores(confusion, names, mapping) if with_labels else None
    clusters, classes = _object_pairs(dataset, records, annotations)
    objects = (
        cluster_scores(np.array(clusters), np.array(classes), num_clusters, dataset.class_names)
        if clusters
        else None
    )
    report["summary"] = {
        "mIoU": semantic["miou"] if semantic else None,
        "cluster accuracy": objects["accuracy"] if objects else None,
        "NMI": objects["nmi"] if objects else None,
        "ARI": objects["ari"] if objects else None,
    }
    report.update(
        per_class_iou=semantic["per_class_iou"] if semantic else {},
        num_clusters=num_clusters,
        matching=args.matching,
        matching_splits=args.matching_splits or args.splits,
        num_with_semantic_labels=with_labels,
        num_unannotated=sum(r.file_name not in annotations for r in records),
        semantic=semantic,
        objects=objects,
        pseudo_gt=args.pseudo_gt,
    )
    write_json(args.out, report)
    log.info("stage 2 on %d images: %s", len(records), report["summary"])


def write_table(args: argparse.Namespace) -> None:
    """One Markdown file with a summary table and a per-class IoU table."""
    reports = [read_json(path) for path in args.reports]
    for path, report in zip(args.reports, reports, strict=True):
        if not isinstance(report, dict) or not {"title", "summary", "num_images"} <= set(report):
            raise ValueError(f"{path}: not a maskdistill metrics JSON (title/summary missing)")
    text = "# maskdistill metrics\n\n" + metrics_markdown(reports)
    with atomic_path(args.out) as tmp:
        Path(tmp).write_text(text)
    log.info("wrote %s", args.out)
