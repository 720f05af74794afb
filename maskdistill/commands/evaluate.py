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
from pathlib import Path

import numpy as np

from maskdistill import evaluation
from maskdistill.commands.dataset_args import (
    add_dataset_arguments,
    dataset_spec,
    open_dataset_from_args,
)
from maskdistill.data import Dataset, ImageRecord
from maskdistill.io import atomic_path, read_json, write_json
from maskdistill.masks import paint_label_map
from maskdistill.metrics import cluster_scores, metrics_markdown, semantic_scores
from maskdistill.shards import read_columns

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


def _eval_dataset(args: argparse.Namespace) -> tuple[Dataset, list[ImageRecord]]:
    dataset = open_dataset_from_args(args)
    if not dataset.has_ground_truth:
        raise ValueError(f"{args.images}: the dataset has no ground truth to evaluate against")
    return dataset, dataset.records()


def evaluate_discovery(args: argparse.Namespace) -> None:
    """CorLoc over the evaluation images; images the shards lack count as misses."""
    dataset, records = _eval_dataset(args)
    table = read_columns(args.shards, ("box",))
    boxes = dict(zip(table["file_name"], map(tuple, table["box"].tolist()), strict=True))
    result = evaluation.corloc(dataset, records, boxes)
    report = evaluation.report("stage 1: discover", args.splits, len(records), dataset_spec(args))
    report["summary"]["CorLoc"] = result.value
    report.update(
        num_scored=result.scored,
        num_hits=result.hits,
        missing=result.missing,
        without_boxes=result.without_boxes,
        shards=list(args.shards),
    )
    write_json(args.out, report)
    log.info(
        "CorLoc %.1f%% over %d images (%d missing)",
        100 * result.value,
        result.scored,
        len(result.missing),
    )


def evaluate_cluster(args: argparse.Namespace) -> None:
    """Semantic mIoU of the painted stage-2 masks and object-level cluster scores."""
    dataset, records = _eval_dataset(args)
    by_name, num_clusters = evaluation.index_annotations(read_json(args.pseudo_gt), args.pseudo_gt)
    annotations = evaluation.one_per_image(by_name, args.pseudo_gt)

    def label_map(record: ImageRecord) -> np.ndarray:
        ann = annotations.get(record.file_name)
        masks = [] if ann is None else [(evaluation.annotation_mask(ann, record, args.pseudo_gt),
                                          ann["category_id"])]  # fmt: skip
        return paint_label_map((record.height, record.width), masks)

    confusion, with_labels = evaluation.semantic_confusion(
        dataset, records, label_map, num_clusters + 1
    )
    mapping = None
    if args.matching == "objects":
        matching_dataset = open_dataset_from_args(args, args.matching_splits or args.splits)
        mapping = evaluation.object_label_mapping(
            matching_dataset, annotations, num_clusters, args.pseudo_gt
        )
    names = ("background", *dataset.class_names)
    semantic = semantic_scores(confusion, names, mapping) if with_labels else None
    clusters, classes = evaluation.object_pairs(dataset, records, annotations)
    objects = (
        cluster_scores(np.array(clusters), np.array(classes), num_clusters, dataset.class_names)
        if clusters
        else None
    )
    report = evaluation.report("stage 2: cluster", args.splits, len(records), dataset_spec(args))
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
