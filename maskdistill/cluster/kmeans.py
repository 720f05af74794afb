"""K-means over mask features (docs/method.md, stage 2; pure, no file I/O).

Divide every feature dimension by its standard deviation over the whole set
(scipy.cluster.vq.whiten), L2-normalise every vector, K-means with K' = k x overcluster clusters.
Support-set features are clustered together with the target set; only the target's labels are
returned.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.cluster import KMeans, MiniBatchKMeans

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
