"""Evaluate stage outputs against the dataset's ground truth (metrics JSON + Markdown table).

Subcommands:
  ``discovery``: CorLoc of the discover shards' mask boxes, and the class-agnostic mask AP50 of
  the masks themselves (each image's one mask as a prediction with score 1: the baseline of
  stage 3).
  ``cluster``: semantic mIoU of the stage-2 label maps (each image's mask painted with its
  category id = 1 + cluster index, background 0), labels matched to classes by Hungarian /
  majority vote on pixels (default) or, as the reference does, through the object-level
  matching (``--matching objects``); and the object-level cluster accuracy, NMI and ARI (a
  mask's class = class of the GT box with the highest IoU with the mask's box).
  ``distill``: class-agnostic mask AP50 of the Mask R-CNN predictions, "multi" (all of them)
  and "single" (each image's best), and the semantic mIoU of label maps painted from all
  predictions in descending score (a pixel takes the label of the best prediction covering
  it), matched to the classes as stage 2's.
  ``labels``: semantic mIoU of a folder of label PNGs (stage 4's selected maps, stage 5's
  predictions, with or without CRF), labels matched to the classes as stage 2's.
  ``table``: render metrics JSONs as one Markdown file.
  ``ablation``: the paper's ablation table of one run (every stage's mIoU, beside the paper's
  numbers with --paper), as Markdown and JSON.

Only the images of ``--splits`` (the evaluation split) are scored; predictions are joined with
the ground truth by file name.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import numpy as np

from maskdistill import coco_files, evaluation
from maskdistill.commands.dataset_args import (
    add_dataset_arguments,
    dataset_spec,
    open_dataset_from_args,
)
from maskdistill.commands.settings_args import named_values
from maskdistill.data import Dataset, ImageRecord
from maskdistill.discover.shard_file import full_resolution_mask, read_columns, read_shard
from maskdistill.io import atomic_path, read_json, write_json, write_png
from maskdistill.masks import (
    find_label_png,
    label_png_path,
    mask_annotation,
    paint_label_map,
    read_label_png,
)
from maskdistill.metrics import (
    ablation_markdown,
    ablation_rows,
    cluster_scores,
    comparison_markdown,
    metrics_markdown,
    semantic_scores,
)
from maskdistill.paper import PAPERS
from maskdistill.pictures.charts import setting_curves

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="what", required=True, metavar="WHAT")
    discovery = sub.add_parser("discovery", help="CorLoc of the discovered masks")
    discovery.add_argument("--shards", nargs="+", required=True, help="discover shards")
    cluster = sub.add_parser("cluster", help="mIoU, cluster accuracy, NMI, ARI of stage 2")
    cluster.add_argument(
        "--pseudo-gt", nargs="+", required=True, help="stage-2 COCO JSONs (shard files)"
    )
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
    distill = sub.add_parser("distill", help="mask AP50 and painted mIoU of stage 3")
    distill.add_argument(
        "--predictions", nargs="+", required=True, help="stage-3 predictions (JSON lists: shards)"
    )
    distill.add_argument(
        "--pseudo-gt", nargs="+", required=True, help="stage-2 COCO JSONs: the classes"
    )
    labels = sub.add_parser("labels", help="mIoU of label PNGs (stages 4 and 5)")
    labels.add_argument(
        "--labels", nargs="+", required=True, help="folders of label PNGs (<file name>.png)"
    )
    labels.add_argument(
        "--pseudo-gt", nargs="+", required=True, help="stage-2 COCO JSONs: the labels"
    )
    labels.add_argument(
        "--supervised",
        action="store_true",
        help="the labels are ground-truth classes (a linear probe's): no matching",
    )
    labels.add_argument("--title", required=True, help="the row's name, e.g. 'stage 5: segment'")
    labels.add_argument(
        "--missing",
        choices=("error", "skip"),
        default="error",
        help="an image without a label PNG: an error, or left out (stage 4 writes none for an "
        "image without predictions)",
    )
    labels.add_argument(
        "--select-stats",
        nargs="+",
        default=None,
        help="stage-4 stats JSONs (shards): also score the images where a prediction reached "
        "tau, beside stage 2's maps of the same images",
    )
    for command in (distill, labels):
        command.add_argument(
            "--naming",
            default=None,
            help="stage-2 metrics JSON of the objects protocol: name the labels as stage 2 did "
            "(the reference's protocol) instead of matching this stage on its own pixels",
        )
    labels.set_defaults(_run=evaluate_labels)
    for command in (discovery, cluster, distill, labels):
        add_dataset_arguments(command)
        command.add_argument("--out", required=True, help="metrics JSON to write")
    discovery.set_defaults(_run=evaluate_discovery)
    cluster.set_defaults(_run=evaluate_cluster)
    distill.set_defaults(_run=evaluate_distill)
    table = sub.add_parser("table", help="render metrics JSONs as Markdown")
    table.add_argument("--reports", nargs="+", required=True, help="metrics JSONs, in order")
    table.add_argument("--out", required=True, help="Markdown file to write")
    table.set_defaults(_run=write_table)
    ablation = sub.add_parser("ablation", help="the ablation table (Markdown + JSON)")
    ablation.add_argument("--reports", nargs="+", required=True, help="metrics JSONs, in order")
    ablation.add_argument("--paper", choices=sorted(PAPERS), default=None, help="beside these")
    ablation.add_argument("--out", required=True, help="Markdown file to write")
    ablation.add_argument("--json", required=True, help="JSON file to write")
    ablation.set_defaults(_run=write_ablation)
    compare = sub.add_parser("compare", help="runs that differ in one setting, side by side")
    compare.add_argument("--setting", required=True, help="the setting the runs differ in")
    compare.add_argument(
        "--run",
        nargs="+",
        required=True,
        metavar="VALUE=RUN_DIR",
        help="each run's value of the setting and its folder (results/<run_name>), in order",
    )
    compare.add_argument("--out-dir", required=True, help="folder for compare.md and .png")
    compare.set_defaults(_run=write_comparison)


def _eval_dataset(args: argparse.Namespace) -> tuple[Dataset, list[ImageRecord]]:
    dataset = open_dataset_from_args(args)
    if not dataset.has_ground_truth:
        raise ValueError(f"{args.images}: the dataset has no ground truth to evaluate against")
    return dataset, dataset.records()


def _mask_predictions(shards: list[str], names: set[str]) -> list[dict]:
    """Each named image's discovered mask as a COCO results entry with score 1."""
    predictions = []
    for shard in shards:
        for record in read_shard(shard):
            if record["file_name"] in names and not record["empty"]:
                mask = full_resolution_mask(record)
                entry = mask_annotation(mask, annotation_id=0, image_id=0, category_id=1)
                predictions.append({**entry, "file_name": record["file_name"]})
    return predictions


def evaluate_discovery(args: argparse.Namespace) -> None:
    """CorLoc and mask AP50 over the evaluation images; images the shards lack count as misses."""
    dataset, records = _eval_dataset(args)
    table = read_columns(args.shards, ("box",))
    boxes = dict(zip(table["file_name"], map(tuple, table["box"].tolist()), strict=True))
    result = evaluation.corloc(dataset, records, boxes)
    ground_truth = evaluation.instance_ground_truth(dataset, records)
    masks = _mask_predictions(args.shards, {r.file_name for r in records})
    report = evaluation.report("stage 1: discover", args.splits, len(records), dataset_spec(args))
    report["summary"]["CorLoc"] = result.value
    report["summary"]["mask AP50"] = evaluation.mask_ap50(ground_truth, masks)
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
    mapping = None
    if args.matching == "objects":  # its splits' annotations, read once they are done with
        matching_dataset = open_dataset_from_args(args, args.matching_splits or args.splits)
        matched, num_clusters, source = _pseudo_gt(args, matching_dataset.records())
        mapping = evaluation.object_label_mapping(matching_dataset, matched, num_clusters, source)
    annotations, num_clusters, source = _pseudo_gt(args, records)
    confusion, with_labels = evaluation.semantic_confusion(
        dataset,
        records,
        lambda record: evaluation.pseudo_label_map(annotations, record, source),
        num_clusters + 1,
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
        # the objects protocol's naming of every label (class index, background 0), which the
        # later stages' metrics apply (--naming)
        naming=None if mapping is None else mapping.tolist(),
        num_with_semantic_labels=with_labels,
        num_unannotated=sum(r.file_name not in annotations for r in records),
        semantic=semantic,
        objects=objects,
        pseudo_gt=list(args.pseudo_gt),
    )
    write_json(args.out, report)
    log.info("stage 2 on %d images: %s", len(records), report["summary"])


def evaluate_distill(args: argparse.Namespace) -> None:
    """Mask AP50 (multi, single) and the painted mIoU of the stage-3 predictions."""
    dataset, records = _eval_dataset(args)
    _, num_clusters, _ = _pseudo_gt(args, [])
    names = {r.file_name for r in records}
    mine = coco_files.read_results(args.predictions, keep=names.__contains__)
    ground_truth = evaluation.instance_ground_truth(dataset, records)
    grouped = coco_files.by_image(mine)

    def label_map(record: ImageRecord) -> np.ndarray:
        masks = [
            (coco_files.annotation_mask(p, record, "stage-3 predictions"), p["category_id"])
            for p in grouped.get(record.file_name, [])
        ]
        return paint_label_map((record.height, record.width), masks, overlap="fill")

    confusion, with_labels = evaluation.semantic_confusion(
        dataset, records, label_map, num_clusters + 1
    )
    names = ("background", *dataset.class_names)
    naming = _naming(args, num_clusters + 1)
    semantic = semantic_scores(confusion, names, naming) if with_labels else None
    report = evaluation.report("stage 3: distill", args.splits, len(records), dataset_spec(args))
    report["summary"] = {
        "mask AP50 (multi)": evaluation.mask_ap50(ground_truth, mine),
        "mask AP50 (single)": evaluation.mask_ap50(ground_truth, coco_files.most_confident(mine)),
        "mIoU": semantic["miou"] if semantic else None,
    }
    report.update(
        per_class_iou=semantic["per_class_iou"] if semantic else {},
        num_predictions=len(mine),
        num_images_with_predictions=len(grouped),
        num_ground_truth_instances=len(ground_truth["annotations"]),
        matching=_protocol(args),
        semantic=semantic,
        predictions=list(args.predictions),
    )
    write_json(args.out, report)
    log.info("stage 3 on %d images: %s", len(records), report["summary"])


def _pseudo_gt(
    args: argparse.Namespace, records: list[ImageRecord]
) -> tuple[dict[str, dict], int, str]:
    """The stage-2 annotation of each of ``records`` that has one (only theirs are held), the
    number of clusters, and how messages name the files."""
    names = {r.file_name for r in records}
    coco = coco_files.read_pseudo_gt(args.pseudo_gt, keep=names.__contains__)
    source = coco_files.files_named(args.pseudo_gt)
    by_name, num_clusters = coco_files.index_annotations(coco, source)
    return coco_files.one_per_image(by_name, source), num_clusters, source


def _naming(args: argparse.Namespace, num_labels: int) -> np.ndarray | None:
    """The label naming of ``--naming`` (stage 2's, the objects protocol), or None (pixels:
    each stage matched on its own confusion matrix)."""
    if args.naming is None:
        return None
    return evaluation.stored_naming(read_json(args.naming), num_labels, args.naming)


def _protocol(args: argparse.Namespace) -> str:
    return "pixels" if args.naming is None else "objects"


def evaluate_labels(args: argparse.Namespace) -> None:
    """Semantic mIoU and per-class IoU of label PNGs (matched per the protocol); with
    ``--select-stats``, also on the images where a prediction reached tau, beside stage 2's."""
    dataset, records = _eval_dataset(args)
    names = ("background", *dataset.class_names)
    num_labels = len(names) if args.supervised else 1 + _pseudo_gt(args, [])[1]
    if args.missing == "skip":  # stage 4 writes no map for an image without predictions
        records = [r for r in records if _has_labels(args.labels, r.file_name)]

    def label_map(record: ImageRecord) -> np.ndarray:
        path = find_label_png(args.labels, record.file_name)
        labels = read_label_png(path)
        if labels.max(initial=0) >= num_labels:
            raise ValueError(f"{path}: label {labels.max()}, expected 0..{num_labels - 1}")
        return labels

    confusion, with_labels = evaluation.semantic_confusion(dataset, records, label_map, num_labels)
    if not with_labels:
        raise ValueError(f"{args.images}: no image of split {args.splits} has semantic labels")
    mapping = np.arange(num_labels) if args.supervised else _naming(args, num_labels)
    semantic = semantic_scores(confusion, names, mapping)
    report = evaluation.report(args.title, args.splits, len(records), dataset_spec(args))
    report["summary"] = {"mIoU": semantic["miou"]}
    if args.select_stats:
        report["summary"] |= _confident_scores(args, dataset, records, label_map, num_labels)
    report.update(
        per_class_iou=semantic["per_class_iou"],
        num_with_semantic_labels=with_labels,
        matching="identity (supervised)" if args.supervised else _protocol(args),
        semantic=semantic,
        labels=list(args.labels),
    )
    write_json(args.out, report)
    log.info("%s on %d images: %s", args.title, with_labels, report["summary"])


def _has_labels(folders: list[str], file_name: str) -> bool:
    return any(label_png_path(folder, file_name).is_file() for folder in folders)


def _confident_scores(args, dataset, records, label_map, num_labels: int) -> dict[str, Any]:
    """mIoU of the stage-4 maps and of the stage-2 maps on the images where a prediction
    reached tau (``--select-stats``), and those images' share of all labelled images."""
    scored = {r.file_name for r in records}
    confident = {
        row["file_name"]
        for path in args.select_stats
        for row in read_json(path)["images"]
        if row["file_name"] in scored and row["kept"] > 0 and not row["fell_back"]
    }
    subset = [r for r in records if r.file_name in confident]
    annotations, _, _ = _pseudo_gt(args, subset)
    names = ("background", *dataset.class_names)
    scores = {"share of images reaching tau": len(subset) / max(len(records), 1)}
    for key, paint in (
        ("mIoU (images reaching tau)", label_map),
        ("stage-2 mIoU (same images)", lambda r: evaluation.pseudo_label_map(annotations, r, "")),
    ):
        confusion, scored = evaluation.semantic_confusion(dataset, subset, paint, num_labels)
        mapping = _naming(args, num_labels)
        scores[key] = semantic_scores(confusion, names, mapping)["miou"] if scored else None
    return scores


def _read_reports(paths: list[str]) -> list[dict]:
    """Metrics JSONs, each checked to be one."""
    reports = [read_json(path) for path in paths]
    for path, report in zip(paths, reports, strict=True):
        if not isinstance(report, dict) or not {"title", "summary", "num_images"} <= set(report):
            raise ValueError(f"{path}: not a maskdistill metrics JSON (title/summary missing)")
    return reports


def write_ablation(args: argparse.Namespace) -> None:
    """The ablation table as Markdown (--out) and JSON (--json)."""
    paper = PAPERS[args.paper] if args.paper else None
    rows = ablation_rows(_read_reports(args.reports), paper)
    title = "# maskdistill ablation\n\n"
    with atomic_path(args.out) as tmp:
        Path(tmp).write_text(title + ablation_markdown(rows, args.paper))
    write_json(args.json, {"paper": args.paper, "rows": rows, "reports": list(args.reports)})
    log.info("wrote %s and %s (%d rows)", args.out, args.json, len(rows))


def write_comparison(args: argparse.Namespace) -> None:
    """compare.md (every run's stage mIoUs) and compare.png (each stage's mIoU against the
    setting) from the runs' ``evaluate/ablation.json``."""
    runs = {}
    for value, folder in named_values(args.run, "--run", "VALUE=RUN_DIR").items():
        path = Path(folder) / "evaluate" / "ablation.json"
        table = read_json(path)
        if not isinstance(table, dict) or not isinstance(table.get("rows"), list):
            raise ValueError(f"{path}: not an ablation JSON (no rows)")
        runs[value] = table["rows"]
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = f"# maskdistill: runs by {args.setting}\n\n" + comparison_markdown(args.setting, runs)
    with atomic_path(out / "compare.md") as tmp:
        Path(tmp).write_text(text)
    mious = [{row["title"]: row["miou"] for row in rows} for rows in runs.values()]
    titles = dict.fromkeys(title for miou in mious for title in miou)
    series = {title: [miou.get(title) for miou in mious] for title in titles}
    write_png(out / "compare.png", setting_curves(args.setting, list(runs), series))
    log.info("wrote %s and %s (%d runs)", out / "compare.md", out / "compare.png", len(runs))


def write_table(args: argparse.Namespace) -> None:
    """One Markdown file with a summary table and a per-class IoU table."""
    reports = _read_reports(args.reports)
    text = "# maskdistill metrics\n\n" + metrics_markdown(reports)
    with atomic_path(args.out) as tmp:
        Path(tmp).write_text(text)
    log.info("wrote %s", args.out)
