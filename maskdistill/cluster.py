"""Stage 2 core: K-means over mask features, and the COCO pseudo ground truth (pure, no file I/O).

docs/method.md, stage 2: divide every feature dimension by its standard deviation over the whole set
(scipy.cluster.vq.whiten), L2-normalise every vector, K-means with K' = k x overcluster clusters.
Support-set features are clustered together with the target set; only the target's labels are
returned.

Cluster index i (0-based) is written as COCO ``category_id`` i + 1 named ``cluster_<i>``, and the
stage-2 label maps paint a mask with the same value i + 1 (0 is background).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.cluster import KMeans, MiniBatchKMeans

from maskdistill.masks import mask_annotation

KMEANS_METHODS = ("full", "minibatch")
MINIBATCH_SIZE = 1000  # the reference's MiniBatchKMeans(batch_size=1000)
# scikit-learn < 1.4 defaults, which the reference ran with (1.4 changed them to "auto").
N_INIT = {"full": 10, "minibatch": 3}


@dataclass(frozen=True)
class Clustering:
    """K-means result for the target set.

    labels: int64 (N,) cluster index of each target feature, 0 .. num_clusters - 1.
    sizes: int64 (num_clusters,) number of target features per cluster.
    support_sizes: int64 (num_clusters,) number of support features per cluster.
    inertia: sum of squared distances to the centres over target + support (normalised space).
    """

    labels: np.ndarray
    sizes: np.ndarray
    support_sizes: np.ndarray
    inertia: float
    num_clusters: int


def whiten(features: np.ndarray) -> np.ndarray:
    """Divide each dimension of (N, D) features by its standard deviation (as scipy's whiten).

    Dimensions with zero deviation are left unscaled. Returns float32 (N, D).
    """
    std = np.asarray(features, dtype=np.float64).std(axis=0)
    std[std == 0] = 1.0
    return (features / std).astype(np.float32)


def l2_normalize(features: np.ndarray) -> np.ndarray:
    """Scale each row of (N, D) features to unit Euclidean norm (zero rows stay zero)."""
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return (features / norms).astype(np.float32)


def kmeans(
    features: np.ndarray, num_clusters: int, method: str, seed: int
) -> tuple[np.ndarray, float]:
    """K-means of (N, D) features: (labels int64 (N,), inertia).

    ``method``: ``minibatch`` (MiniBatchKMeans, batch 1000, as the reference) or ``full``
    (Lloyd's KMeans). Deterministic for a given ``seed``.
    """
    if method not in KMEANS_METHODS:
        raise ValueError(f"kmeans method {method!r} is not one of {KMEANS_METHODS}")
    if num_clusters < 1:
        raise ValueError(f"number of clusters must be >= 1, got {num_clusters}")
    if len(features) < num_clusters:
        raise ValueError(
            f"cannot make {num_clusters} clusters from {len(features)} non-empty masks"
        )
    if method == "minibatch":
        model = MiniBatchKMeans(
            n_clusters=num_clusters,
            batch_size=MINIBATCH_SIZE,
            random_state=seed,
            n_init=N_INIT[method],
        )
    else:
        model = KMeans(n_clusters=num_clusters, random_state=seed, n_init=N_INIT[method])
    model.fit(features)
    return model.labels_.astype(np.int64), float(model.inertia_)


def cluster_features(
    target: np.ndarray,
    support: np.ndarray | None = None,
    *,
    k: int,
    overcluster: int = 1,
    method: str = "minibatch",
    seed: int = 1234,
) -> Clustering:
    """Cluster target (N, D) features, optionally together with support (M, D) features.

    Whitening statistics and K-means run over target + support; ``labels`` covers the target
    rows only, in order. K' = k x overcluster.
    """
    target = np.asarray(target, dtype=np.float32)
    support = np.zeros((0, target.shape[1]), np.float32) if support is None else support
    support = np.asarray(support, dtype=np.float32)
    if target.ndim != 2 or support.ndim != 2 or support.shape[1] != target.shape[1]:
        raise ValueError(
            f"target {target.shape} and support {support.shape} features must be (N, D), same D"
        )
    num_clusters = k * overcluster
    features = l2_normalize(whiten(np.concatenate([target, support])))
    labels, inertia = kmeans(features, num_clusters, method, seed)
    target_labels = labels[: len(target)]
    return Clustering(
        labels=target_labels,
        sizes=np.bincount(target_labels, minlength=num_clusters),
        support_sizes=np.bincount(labels[len(target) :], minlength=num_clusters),
        inertia=inertia,
        num_clusters=num_clusters,
    )


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
) -> tuple[dict[str, Any], list[str]]:
    """The COCO instances dict of the pseudo ground truth, and the images whose mask is empty.

    Args:
        images: (file name, (H, W), full-resolution bool mask or None when empty) per target
            image, in shard order (e.g. streamed from the shards).
        labels: file name -> cluster index of each non-empty mask.
        num_clusters: K'.
        info: the JSON's ``info`` (description, provenance).

    Image ids are numbered 0, 1, ... in the given order, not taken from the shards: a shard's
    ids are positions in the dataset listing when it was written, and after images are added to
    a folder dataset only the shards they land in are rewritten, so ids from different shards
    may collide (stages join by file name).
    """
    coco_images, annotations, empty = [], [], []
    for file_name, (height, width), mask in images:
        image_id = len(coco_images)
        coco_images.append(
            {"id": image_id, "file_name": file_name, "height": height, "width": width}
        )
        if mask is None or not mask.any():
            empty.append(file_name)
            continue
        annotations.append(
            mask_annotation(
                mask,
                annotation_id=len(annotations) + 1,
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
