"""Stage 2: K-means over the discovered masks' features -> COCO pseudo ground truth + stats.

Reads the feature of every non-empty mask in the target shards (and in optional support-set
shards, clustered together but not written), clusters them (:mod:`maskdistill.cluster`), then
streams the target shards again to write one COCO annotation per image (compressed RLE of the
full-resolution mask, category_id = 1 + cluster index), one COCO file per target shard (--out,
in the order of --shards; image and annotation ids continue from shard to shard), so that
the job holds the features and one shard's masks, and each later job reads only its shard.
Images whose mask is empty are listed in the stats JSON and get no annotation.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterator, Sequence

import numpy as np
from threadpoolctl import threadpool_limits

from maskdistill.cluster import kmeans, pseudo_gt
from maskdistill.config import defaults
from maskdistill.discover.shard_file import (
    full_resolution_mask,
    read_columns,
    read_shard,
    skipped_images,
)
from maskdistill.io import write_json
from maskdistill.progress import Progress
from maskdistill.provenance import provenance

log = logging.getLogger(__name__)
SETTINGS = ("k", "overcluster", "kmeans", "seed")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    default = defaults("cluster")
    parser.add_argument(
        "--shards", nargs="+", required=True, help="discover shards of the target set"
    )
    parser.add_argument(
        "--support-shards",
        nargs="*",
        default=[],
        help="discover shards of a support set (clustered with the target, not written)",
    )
    parser.add_argument("--k", type=int, default=default["k"], help="number of classes K")
    parser.add_argument(
        "--overcluster",
        type=int,
        default=default["overcluster"],
        help="clusters per class: K' = k x overcluster",
    )
    parser.add_argument("--kmeans", choices=kmeans.KMEANS_METHODS, default=default["kmeans"])
    parser.add_argument("--seed", type=int, default=default["seed"], help="K-means random state")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for K-means")
    parser.add_argument(
        "--out",
        nargs="+",
        required=True,
        help="the pseudo ground truth: one COCO instances JSON per target shard, in order",
    )
    parser.add_argument("--stats", required=True, help="clustering statistics (JSON)")


def _shard_masks(
    shard: str, bar: Progress
) -> Iterator[tuple[str, tuple[int, int], np.ndarray | None]]:
    """(file name, (H, W), full-resolution mask or None when empty) of every shard record."""
    for record in read_shard(shard):
        mask = None if record["empty"] else full_resolution_mask(record)
        yield record["file_name"], record["image_size"], mask
        bar.update()


def write_pseudo_gt(
    args: argparse.Namespace, labels: dict[str, int], num_clusters: int, count: int
) -> list[str]:
    """Write each target shard's pseudo ground truth to its --out file; the empty masks' images."""
    info = {
        "description": "maskdistill stage-2 pseudo ground truth (category_id = 1 + cluster index)",
        **provenance(),
    }
    first_ids, empty = (0, 1), []
    with Progress(count, "pseudo ground truth", "images") as bar:
        for shard, out in zip(args.shards, args.out, strict=True):
            coco, shard_empty = pseudo_gt.pseudo_ground_truth(
                _shard_masks(shard, bar), labels, num_clusters, info, first_ids
            )
            write_json(out, coco)
            empty += shard_empty
            first_ids = (
                first_ids[0] + len(coco["images"]),
                first_ids[1] + len(coco["annotations"]),
            )
    return empty


def _support_features(paths: Sequence[str], dims: int) -> np.ndarray | None:
    """The non-empty support masks' features, or None without a support set."""
    if not paths:
        return None
    table = read_columns(paths, ("empty", "feature"))
    support = table["feature"][~table["empty"]]
    if support.shape[1] != dims:
        raise ValueError(
            f"{paths[0]}: support features have {support.shape[1]} dims, the target's {dims}"
        )
    return support


def run(args: argparse.Namespace) -> None:
    if len(args.out) != len(args.shards):
        raise ValueError(
            f"--out names {len(args.out)} files for {len(args.shards)} --shards: one per shard"
        )
    table = read_columns(args.shards, ("empty", "feature"))
    keep = ~table["empty"]
    support = _support_features(args.support_shards, table["feature"].shape[1])
    log.info(
        "clustering %d target masks (%d empty) and %d support masks into %d x %d clusters",
        keep.sum(),
        (~keep).sum(),
        0 if support is None else len(support),
        args.k,
        args.overcluster,
    )
    with threadpool_limits(args.threads):
        result = kmeans.cluster_features(
            table["feature"][keep],
            support,
            k=args.k,
            overcluster=args.overcluster,
            method=args.kmeans,
            seed=args.seed,
        )
    labels = dict(zip(table["file_name"][keep], result.labels.tolist(), strict=True))
    empty = write_pseudo_gt(args, labels, result.num_clusters, len(keep))
    settings = {name: getattr(args, name) for name in SETTINGS}
    stats = pseudo_gt.cluster_stats(settings, result, len(keep), empty, skipped_images(args.shards))
    stats.update(
        shards=list(args.shards), support_shards=list(args.support_shards), provenance=provenance()
    )
    write_json(args.stats, stats)
    log.info(
        "wrote %s (%d images, %d empty) and %s",
        " ".join(args.out),
        len(keep),
        len(empty),
        args.stats,
    )
