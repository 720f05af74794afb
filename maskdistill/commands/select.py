"""Stage 4: confident Mask R-CNN predictions -> one palette PNG label map per image.

One job per shard: for every image of the pseudo ground truth (the learning images) in shard
--shard of --num-shards (``crc32(file_name) % num_shards``, the shards of stage 3's
predictions), its predictions (that shard's file of ``distill predict``) scoring at
least --tau, or its best one alone when none does, painted in descending score with their
category id (1 + cluster index) on an all-zero map; a mask touching pixels painted before it
is skipped (--overlap skip, the paper's text), or treated as the authors' code treats it
(overwrite: see maskdistill.select.confident). An image without any prediction gets no PNG
(it leaves stage 5's training set, as in the reference). The PNGs (``<out>/<file name stem>.png``,
data/README.md) are written into a temporary folder renamed when complete; --stats gets what
was kept per image. Predictions of an image outside the shard are an error (the wrong shard's
file), so a job holds one shard's predictions and maps, never the dataset's.
"""

from __future__ import annotations

import argparse
import logging
from collections import Counter

from maskdistill.coco_files import (
    annotations_as_predictions,
    by_image,
    files_named,
    index_annotations,
    read_pseudo_gt,
)
from maskdistill.commands.settings_args import add_settings_arguments
from maskdistill.io import atomic_path, read_json, write_json
from maskdistill.masks import IGNORE, decode_rle, label_png_path, write_label_png
from maskdistill.names import check_collisions, check_name
from maskdistill.progress import Progress
from maskdistill.provenance import provenance
from maskdistill.select.confident import select_label_map
from maskdistill.sharding import in_shard

log = logging.getLogger(__name__)
SETTINGS = ("tau", "overlap")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--predictions", required=True, help="stage-3 predictions of the shard (JSON list)"
    )
    parser.add_argument(
        "--from-annotations",
        action="store_true",
        help="--predictions is a COCO instances JSON (the stage-2 pseudo ground truth): each "
        "annotation is a prediction of score 1 (stage 5 then learns from the stage-2 masks)",
    )
    parser.add_argument(
        "--pseudo-gt",
        nargs="+",
        required=True,
        help="stage-2 COCO JSONs: the images (the shard's pseudo ground truth file, or all)",
    )
    parser.add_argument("--shard", type=int, default=0, help="the shard's index")
    parser.add_argument("--num-shards", type=int, default=1, help="the number of shards")
    add_settings_arguments(parser, "select", SETTINGS, "selection (docs/method.md, stage 4)")
    parser.add_argument("--out", required=True, help="folder of label PNGs to create")
    parser.add_argument("--stats", required=True, help="selection statistics (JSON)")


def run(args: argparse.Namespace) -> None:
    if not 0 <= args.shard < args.num_shards:
        raise ValueError(f"--shard {args.shard}: expected 0 <= shard < --num-shards")
    source = files_named(args.pseudo_gt)
    index = read_pseudo_gt(args.pseudo_gt, keep=in_shard(args.shard, args.num_shards))
    _, num_categories = index_annotations(index, source)
    if num_categories >= IGNORE:
        raise ValueError(
            f"{source}: {num_categories} categories; a label PNG holds at most "
            f"{IGNORE - 1} (lower cluster.k x cluster.overcluster)"
        )
    images = index["images"]
    names = [check_name(image["file_name"], source) for image in images]
    check_collisions(names, ".png", source)
    grouped = _shard_predictions(args, set(names))
    rows = []
    with atomic_path(args.out) as tmp, Progress(len(images), "select", "images") as bar:
        for image in images:
            path = label_png_path(tmp, image["file_name"])
            selection = select_label_map(
                grouped.get(image["file_name"], []),
                (image["height"], image["width"]),
                args.tau,
                args.overlap,
                lambda p, shape=(image["height"], image["width"]): decode_rle(
                    p["segmentation"], shape, args.predictions
                ),
            )
            if selection.kept:  # an image without predictions gets no map (the reference)
                path.parent.mkdir(parents=True, exist_ok=True)
                write_label_png(path, selection.labels)
            rows.append(
                {
                    "file_name": image["file_name"],
                    "predictions": len(grouped.get(image["file_name"], [])),
                    "kept": selection.kept,
                    "painted": selection.painted,
                    "fell_back": selection.fell_back,
                    "coverage": round(selection.coverage, 4),
                }
            )
            bar.update()
    stats = selection_stats(rows, args, num_categories)
    write_json(args.stats, stats)
    log.info(
        "wrote %d label maps to %s; %d images without any prediction get none (left out of "
        "stage 5), %d kept only their best prediction (none reached tau %s)",
        len(rows) - stats["num_without_predictions"],
        args.out,
        stats["num_without_predictions"],
        stats["num_fell_back"],
        args.tau,
    )


def _shard_predictions(args: argparse.Namespace, names: set[str]) -> dict[str, list]:
    """The predictions of the shard's images, by image in descending score."""
    predictions = read_json(args.predictions)
    if args.from_annotations:  # the whole pseudo ground truth: this shard's images
        predictions = annotations_as_predictions(predictions, args.predictions)
        predictions = [p for p in predictions if p["file_name"] in names]
    elif not isinstance(predictions, list):
        raise ValueError(f"{args.predictions}: not a COCO results list")
    outside = sorted({p["file_name"] for p in predictions} - names)
    if outside:
        raise ValueError(
            f"{args.predictions}: predictions of {len(outside)} images that are not among the "
            f"images of shard {args.shard} of {args.num_shards} in "
            f"{files_named(args.pseudo_gt)} (e.g. {outside[0]!r}): pass that shard's predictions "
            "file"
        )
    return by_image(predictions)


def selection_stats(rows: list[dict], args: argparse.Namespace, num_categories: int) -> dict:
    """The stats JSON (data/README.md, "Selection stats JSON")."""
    count = max(len(rows), 1)
    return {
        "tau": args.tau,
        "overlap": args.overlap,
        "shard": args.shard,
        "num_shards": args.num_shards,
        "num_categories": num_categories,
        "num_images": len(rows),
        "num_without_predictions": sum(r["predictions"] == 0 for r in rows),
        "num_labelled": sum(r["kept"] > 0 for r in rows),
        "num_confident": sum(r["kept"] > 0 and not r["fell_back"] for r in rows),
        "num_fell_back": sum(r["fell_back"] for r in rows),
        "kept_per_image": dict(sorted(Counter(r["kept"] for r in rows).items())),
        "num_kept": sum(r["kept"] for r in rows),
        "num_painted": sum(r["painted"] for r in rows),
        "mean_coverage": sum(r["coverage"] for r in rows) / count,
        "images": rows,
        "predictions": args.predictions,
        "provenance": provenance(),
    }
