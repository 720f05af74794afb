"""Stage 2: K-means over the discovered masks' features -> COCO pseudo ground truth + stats.

Reads the feature of every non-empty mask in the target shards (and in optional support-set
shards, clustered together but not written), whitens, L2-normalises and clusters them, then
streams the target shards again to write one COCO annotation per image (compressed RLE of the
full-resolution mask, category_id = 1 + cluster index). Images whose mask is empty are listed
in the stats JSON and get no annotation.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from maskdistill.cluster import (
    KMEANS_METHODS,
    Clustering,
    cluster_features,
    coco_categories,
    mask_annotation,
)
from maskdistill.io import write_json
from maskdistill.provenance import provenance
from maskdistill.shards import (
    full_resolution_mask,
    read_shard,
    read_shard_attrs,
    read_shard_table,
)

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--shards", nargs="+", required=True, help="discover shards of the target set"
    )
    parser.add_argument(
        "--support-shards",
        nargs="*",
        default=[],
        help="discover shards of a support set (clustered with the target, not written)",
    )
    parser.add_argument("--k", type=int, default=20, help="number of classes K")
    parser.add_argument(
        "--overcluster", type=int, default=1, help="clusters per class: K' = k x overcluster"
    )
    parser.add_argument("--kmeans", choices=KMEANS_METHODS, default="minibatch")
    parser.add_argument("--seed", type=int, default=1234, help="K-means random state")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for K-means")
    parser.add_argument("--out", required=True, help="pseudo ground truth (COCO instances JSON)")
    parser.add_argument("--stats", required=True, help="clustering statistics (JSON)")


def read_features(paths: Sequence[str]) -> dict[str, np.ndarray]:
    """``file_name``, ``empty`` and ``feature`` columns of all shards, concatenated in order.

    Raises ValueError naming the shard when feature sizes disagree or a file name repeats.
    """
    columns: dict[str, list[np.ndarray]] = {"file_name": [], "empty": [], "feature": []}
    seen: set[str] = set()
    for path in paths:
        table = read_shard_table(path, ("file_name", "empty", "feature"))
        if columns["feature"] and len(table["file_name"]):
            dims = columns["feature"][0].shape[1]
            if table["feature"].shape[1] != dims:
                raise ValueError(
                    f"{path}: features have {table['feature'].shape[1]} dims, {paths[0]} has {dims}"
                )
        repeated = seen.intersection(table["file_name"])
        if repeated:
            raise ValueError(f"{path}: image {sorted(repeated)[0]!r} is also in another shard")
        seen.update(table["file_name"])
        if len(table["file_name"]):
            for name in columns:
                columns[name].append(table[name])
    if not columns["feature"]:
        raise ValueError(f"no image in the shards {list(paths)}")
    return {name: np.concatenate(parts) for name, parts in columns.items()}


def write_pseudo_gt(
    path: str,
    shards: Sequence[str],
    labels: dict[str, int],
    info: dict[str, Any],
    num_clusters: int,
) -> list[str]:
    """Stream the target shards into a COCO instances JSON; return masks found empty.

    ``labels`` maps file name -> cluster index of each non-empty mask. Image ids are numbered
    0, 1, ... in shard order, not taken from the shards: a shard's ids are positions in the
    dataset listing when it was written, and after images are added to a folder dataset only the
    shards they land in are rewritten, so ids from different shards may collide (stages join by
    file name).
    """
    images, annotations, empty = [], [], []
    for shard in shards:
        for record in tqdm(read_shard(shard), desc=Path(shard).name, unit="image"):
            image_id = len(images)
            height, width = record["image_size"]
            images.append(
                {
                    "id": image_id,
                    "file_name": record["file_name"],
                    "height": height,
                    "width": width,
                }
            )
            mask = None if record["empty"] else full_resolution_mask(record)
            if mask is None or not mask.any():
                empty.append(record["file_name"])
                continue
            annotations.append(
                mask_annotation(
                    mask,
                    annotation_id=len(annotations) + 1,
                    image_id=image_id,
                    category_id=labels[record["file_name"]] + 1,
                )
            )
    coco = {
        "info": info,
        "images": images,
        "annotations": annotations,
        "categories": coco_categories(num_clusters),
    }
    write_json(path, coco)
    return empty


def cluster_stats(
    args: argparse.Namespace, result: Clustering, table: dict[str, np.ndarray], empty: list[str]
) -> dict[str, Any]:
    """The stats JSON (data/README.md, "Cluster stats JSON")."""
    return {
        "k": args.k,
        "overcluster": args.overcluster,
        "num_clusters": result.num_clusters,
        "kmeans": args.kmeans,
        "seed": args.seed,
        "inertia": result.inertia,
        "num_images": int(len(table["file_name"])),
        "num_annotated": int(len(table["file_name"]) - len(empty)),
        "num_support": int(result.support_sizes.sum()),
        "cluster_sizes": result.sizes.tolist(),
        "support_cluster_sizes": result.support_sizes.tolist(),
        "empty_images": empty,
        "skipped_images": [
            entry for path in args.shards for entry in read_shard_attrs(path).get("skipped", [])
        ],
        "shards": list(args.shards),
        "support_shards": list(args.support_shards),
        "provenance": provenance(),
    }


def run(args: argparse.Namespace) -> None:
    table = read_features(args.shards)
    keep = ~table["empty"]
    support = None
    if args.support_shards:
        support_table = read_features(args.support_shards)
        support = support_table["feature"][~support_table["empty"]]
        if support.shape[1] != table["feature"].shape[1]:
            raise ValueError(
                f"{args.support_shards[0]}: support features have {support.shape[1]} dims, "
                f"the target's {table['feature'].shape[1]}"
            )
    log.info(
        "clustering %d target masks (%d empty) and %d support masks into %d x %d clusters",
        keep.sum(),
        (~keep).sum(),
        0 if support is None else len(support),
        args.k,
        args.overcluster,
    )
    with threadpool_limits(args.threads):
        result = cluster_features(
            table["feature"][keep],
            support,
            k=args.k,
            overcluster=args.overcluster,
            method=args.kmeans,
            seed=args.seed,
        )
    labels = dict(zip(table["file_name"][keep], result.labels.tolist(), strict=True))
    info = {
        "description": "maskdistill stage-2 pseudo ground truth (category_id = 1 + cluster index)",
        **provenance(),
    }
    empty = write_pseudo_gt(args.out, args.shards, labels, info, result.num_clusters)
    write_json(args.stats, cluster_stats(args, result, table, empty))
    log.info("wrote %s (%d images, %d empty) and %s", args.out, len(keep), len(empty), args.stats)
