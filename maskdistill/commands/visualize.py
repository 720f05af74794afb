"""Pictures of a run: contact sheets of what each stage found, and plots of its numbers.

``sheet``: for a fixed sample of images (--count, --seed: the same images for every stage and
every run with the same dataset), one row per image with the image, the panels of --stage and
the ground truth when the dataset has it. ``plots``: PNG plots of whatever inputs are given
(cluster sizes, Mask R-CNN scores with tau, training curves, mIoU per stage beside the paper's,
per-class IoU, the pixel confusion between classes and clusters). data/README.md, "Pictures".
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from maskdistill import coco_files
from maskdistill.commands.dataset_args import add_dataset_arguments, open_dataset_from_args
from maskdistill.commands.settings_args import add_settings_arguments, named_values
from maskdistill.data import Dataset, ImageRecord
from maskdistill.discover.shard_file import full_resolution_mask, read_shard
from maskdistill.images import load_image
from maskdistill.io import read_json, read_json_lines, write_png
from maskdistill.masks import find_label_png, label_png_path, read_label_png
from maskdistill.metrics import ablation_rows
from maskdistill.paper import PAPERS
from maskdistill.pictures import charts, drawing, sheets

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="what", required=True, metavar="WHAT")
    sheet = sub.add_parser("sheet", help="a contact sheet of one stage (PNG)")
    sheet.add_argument("--stage", choices=sheets.STAGES, required=True)
    add_dataset_arguments(sheet)
    sheet.add_argument("--shards", nargs="+", default=[], help="discover shards")
    sheet.add_argument("--pseudo-gt", nargs="+", default=[], help="stage-2 COCO JSONs (shards)")
    sheet.add_argument(
        "--predictions", nargs="+", default=[], help="stage-3 predictions (JSON lists: shards)"
    )
    sheet.add_argument("--selected", nargs="+", default=[], help="stage-4 label PNG folders")
    sheet.add_argument("--segmented", nargs="+", default=[], help="stage-5 label PNG folders")
    sheet.add_argument("--refined", nargs="+", default=[], help="stage-5 CRF label PNG folders")
    sheet.add_argument(
        "--cluster-metrics", default=None, help="stage-2 metrics JSON: class names in the legend"
    )
    add_settings_arguments(sheet, "visualize", ("count", "seed", "height"), "the sample")
    sheet.add_argument("--out", required=True, help="PNG to write")
    sheet.set_defaults(_run=write_sheet)
    figures = sub.add_parser("plots", help="plots of a run's numbers (PNGs)")
    figures.add_argument(
        "--pseudo-gt", nargs="+", default=[], help="stage-2 COCO JSONs (shards): cluster sizes"
    )
    figures.add_argument(
        "--predictions", nargs="+", default=[], help="stage-3 predictions (shards): scores"
    )
    figures.add_argument("--tau", type=float, default=None, help="stage 4's score threshold")
    figures.add_argument(
        "--logs", nargs="+", default=[], metavar="NAME=PATH", help="training metrics logs"
    )
    figures.add_argument("--reports", nargs="+", default=[], help="metrics JSONs, in order")
    figures.add_argument("--paper", choices=sorted(PAPERS), default=None, help="beside these")
    figures.add_argument("--cluster-metrics", default=None, help="stage-2 metrics: confusion")
    figures.add_argument("--out-dir", required=True, help="folder of the PNGs")
    figures.set_defaults(_run=write_plots)


# ---------------------------------------------------------------- contact sheets


def _discoveries(shards: list[str], names: set[str]) -> dict[str, dict]:
    found = {}
    for shard in shards:
        for record in read_shard(shard):
            if record["file_name"] in names:
                found[record["file_name"]] = {**record, "mask": full_resolution_mask(record)}
    return found


def _pseudo_masks(
    paths: list[str], records: list[ImageRecord]
) -> dict[str, tuple[np.ndarray, int]]:
    names = {r.file_name for r in records}
    path = coco_files.files_named(paths)
    coco = coco_files.read_pseudo_gt(paths, keep=names.__contains__)
    annotations = coco_files.one_per_image(coco_files.index_annotations(coco, path)[0], path)
    return {
        r.file_name: (
            coco_files.annotation_mask(annotations[r.file_name], r, path),
            annotations[r.file_name]["category_id"],
        )  # fmt: skip
        for r in records
        if r.file_name in annotations
    }


def _predicted_masks(paths: list[str], records: list[ImageRecord]) -> dict[str, list]:
    names = {r.file_name for r in records}
    grouped = coco_files.by_image(coco_files.read_results(paths, keep=names.__contains__))
    return {
        r.file_name: [
            (coco_files.annotation_mask(p, r, "stage-3 predictions"), p["category_id"], p["score"])
            for p in grouped.get(r.file_name, [])
        ]
        for r in records
    }


def _labels(folders: list[str], file_name: str) -> np.ndarray | None:
    return read_label_png(find_label_png(folders, file_name)) if folders else None


def sheet_data(args: argparse.Namespace, dataset: Dataset, records: list[ImageRecord]):
    """What the given inputs hold for each sampled image, as :class:`sheets.ImageData`."""
    names = {r.file_name for r in records}
    discoveries = _discoveries(args.shards, names)
    pseudo = _pseudo_masks(args.pseudo_gt, records) if args.pseudo_gt else {}
    predicted = _predicted_masks(args.predictions, records) if args.predictions else {}
    data = []
    for record in records:
        # stage 4 writes no map for an image without predictions: an empty panel
        selected_paths = [label_png_path(folder, record.file_name) for folder in args.selected]
        selected = next((read_label_png(p) for p in selected_paths if p.is_file()), None)
        data.append(
            sheets.ImageData(
                file_name=record.file_name,
                image=load_image(record.path),
                ground_truth=dataset.semantic_labels(record),
                discovery=discoveries.get(record.file_name),
                pseudo=pseudo.get(record.file_name),
                predictions=predicted.get(record.file_name, []),
                selected=selected,
                segmented=_labels(args.segmented, record.file_name),
                refined=_labels(args.refined, record.file_name),
            )
        )
    return data


def _legend(args: argparse.Namespace, dataset: Dataset) -> list[tuple[int, str]]:
    classes = dataset.class_names if dataset.has_ground_truth else ()
    if args.stage == "discover" or not args.pseudo_gt:
        return drawing.cluster_legend(0, class_names=classes)
    coco = coco_files.read_pseudo_gt(args.pseudo_gt, keep=lambda _: False)  # its categories
    num_clusters = len(coco["categories"])
    matching = None
    if args.cluster_metrics:
        semantic = read_json(args.cluster_metrics).get("semantic") or {}
        matching = semantic.get("matching")
    return drawing.cluster_legend(num_clusters, matching, classes)


def write_sheet(args: argparse.Namespace) -> None:
    """The contact sheet of ``--stage`` for the sampled images."""
    dataset = open_dataset_from_args(args)
    records = dataset.records()
    if not records:
        raise ValueError(f"{args.images}: no images in splits {args.splits}")
    chosen = set(sheets.sample([r.file_name for r in records], args.count, args.seed))
    sampled = sorted((r for r in records if r.file_name in chosen), key=lambda r: r.file_name)
    data = sheet_data(args, dataset, sampled)
    sheet = sheets.stage_sheet(args.stage, data, _legend(args, dataset), args.height)
    write_png(args.out, sheet)


# ---------------------------------------------------------------- plots


def _named_logs(entries: list[str]) -> dict[str, list[dict]]:
    paths = named_values(entries, "--logs", "NAME=PATH")
    return {name: read_json_lines(path) for name, path in paths.items()}


def _stage_rows(args: argparse.Namespace) -> list[tuple[str, float | None, float | None]]:
    """(title, mIoU, the paper's mIoU) of each report with an mIoU: the ablation table's rows."""
    paper = PAPERS[args.paper] if args.paper else None
    rows = ablation_rows([read_json(path) for path in args.reports], paper)
    return [(r["title"], r["miou"], r["paper"]) for r in rows if r["miou"] is not None]


def _confusion(path: str) -> tuple[np.ndarray, list[str], list[str]]:
    """Pixel counts of ground-truth classes x clusters, clusters ordered by matched class."""
    semantic = read_json(path).get("semantic")
    if not semantic or "confusion" not in semantic:
        raise ValueError(f"{path}: no pixel confusion matrix (a stage-2 metrics JSON has one)")
    counts = np.asarray(semantic["confusion"])
    classes = list(semantic["per_class_iou"])
    matched = semantic["matching"]
    order = sorted(range(counts.shape[1]), key=lambda k: (classes.index(matched[str(k)]), k))
    names = [f"{k}={matched[str(k)]}" if k else "0 (bg)" for k in order]
    return counts[:, order], classes, names


def write_plots(args: argparse.Namespace) -> None:
    """Every plot whose inputs are given, as ``<out-dir>/<plot>.png`` (data/README.md)."""
    out = Path(args.out_dir)
    if args.pseudo_gt:  # one shard's annotations held at a time: only their clusters are kept
        clusters = []
        for path in args.pseudo_gt:
            coco = coco_files.read_pseudo_gt([path])
            clusters += [a["category_id"] - 1 for a in coco["annotations"]]
        names = [f"cluster_{k:02d}" for k in range(len(coco["categories"]))]
        sizes = np.bincount(clusters, minlength=len(names))
        write_png(out / "cluster_sizes.png", charts.size_bars(sizes.tolist(), names))
    if args.predictions:
        if args.tau is None:
            raise ValueError("--predictions needs --tau (the selection threshold to mark)")
        # one shard's predictions held at a time: only their scores are kept
        scores = [p["score"] for path in args.predictions for p in coco_files.read_results([path])]
        write_png(out / "scores.png", charts.score_histogram(scores, args.tau))
    if args.logs:
        write_png(out / "training.png", charts.training_curves(_named_logs(args.logs)))
    if args.reports:
        write_png(out / "miou.png", charts.miou_bars(_stage_rows(args)))
        per_class = {}
        for path in args.reports:
            report = read_json(path)
            if report.get("per_class_iou"):
                per_class[report["title"]] = report["per_class_iou"]
        write_png(out / "per_class.png", charts.per_class_bars(per_class))
    if args.cluster_metrics:
        write_png(
            out / "confusion.png", charts.confusion_heatmap(*_confusion(args.cluster_metrics))
        )
