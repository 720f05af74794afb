"""The stage-2 pseudo ground truth: the clusters as COCO categories, one mask annotation per
image (pure, no file I/O).

Cluster index i (0-based) is written as COCO ``category_id`` i + 1 named ``cluster_<i>``, and the
stage-2 label maps paint a mask with the same value i + 1 (0 is background).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from maskdistill.cluster.kmeans import Clustering
from maskdistill.masks import mask_annotation


def cluster_name(index: int) -> str:
    """Category name of cluster ``index`` (0-based): ``cluster_00``, ``cluster_01``, ..."""
    return f"cluster_{index:02d}"


def coco_categories(num_clusters: int) -> list[dict[str, Any]]:
    """COCO categories of the clusters: id = cluster index + 1, name ``cluster_<index>``."""
    return [
        {"id": i + 1, "name": cluster_name(i), "supercategory": "object"}
        for i in range(num_clusters)
    ]


def pseudo_ground_truth(
    images: Iterable[tuple[str, tuple[int, int], np.ndarray | None]],
    labels: dict[str, int],
    num_clusters: int,
    info: dict[str, Any],
    first_ids: tuple[int, int] = (0, 1),
) -> tuple[dict[str, Any], list[str]]:
    """The COCO instances dict of the pseudo ground truth (or of one shard of it), and the
    images whose mask is empty.

    Args:
        images: (file name, (H, W), full-resolution bool mask or None when empty) per target
            image, in shard order (e.g. streamed from the shards).
        labels: file name -> cluster index of each non-empty mask.
        num_clusters: K'.
        info: the JSON's ``info`` (description, provenance).
        first_ids: the first image id and the first annotation id (a shard after others
            continues their numbering, so that ids are unique over the shards).

    Image ids are numbered from the first one in the given order, not taken from the discover
    shards: a discover shard's ids are positions in the dataset listing when it was written, and
    after images are added to a folder dataset only the shards they land in are rewritten, so
    ids from different shards may collide (stages join by file name).
    """
    first_image, first_annotation = first_ids
    coco_images, annotations, empty = [], [], []
    for file_name, (height, width), mask in images:
        image_id = first_image + len(coco_images)
        coco_images.append(
            {"id": image_id, "file_name": file_name, "height": height, "width": width}
        )
        if mask is None or not mask.any():
            empty.append(file_name)
            continue
        annotations.append(
            mask_annotation(
                mask,
                annotation_id=first_annotation + len(annotations),
                image_id=image_id,
                category_id=labels[file_name] + 1,
            )
        )
    coco = {
        "info": info,
        "images": coco_images,
        "annotations": annotations,
        "categories": coco_categories(num_clusters),
    }
    return coco, empty


def cluster_stats(
    settings: dict[str, Any],
    result: Clustering,
    num_images: int,
    empty: list[str],
    skipped: list[list[str]],
) -> dict[str, Any]:
    """The stats JSON (data/README.md, "Cluster stats JSON"), without the input paths.

    Args:
        settings: ``k``, ``overcluster``, ``kmeans``, ``seed``.
        num_images: target images (empty masks included).
        empty: file names whose mask was empty.
        skipped: ``[file_name, reason]`` of images the discover shards skipped.
    """
    return {
        "k": settings["k"],
        "overcluster": settings["overcluster"],
        "num_clusters": result.num_clusters,
        "kmeans": settings["kmeans"],
        "seed": settings["seed"],
        "inertia": result.inertia,
        "num_images": int(num_images),
        "num_annotated": int(num_images - len(empty)),
        "num_support": int(result.support_sizes.sum()),
        "cluster_sizes": result.sizes.tolist(),
        "support_cluster_sizes": result.support_sizes.tolist(),
        "empty_images": empty,
        "skipped_images": skipped,
    }
