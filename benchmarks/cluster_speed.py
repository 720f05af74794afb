"""Speed of stage-2 clustering at COCO scale: 120,000 mask features of 384 dims, K = 80.

Clusters Gaussian-mixture features (80 components) with the default minibatch K-means, whitening
and L2 normalisation included (``maskdistill.cluster.kmeans.cluster_features``), and turns
patch-grid masks into full-resolution COCO annotations (``full_resolution_mask`` +
``mask_annotation``). Prints one line per measurement; the results are recorded in
benchmarks/README.md.
Run: ``python benchmarks/cluster_speed.py --threads 2``.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from maskdistill.provenance import machine_description


def gaussian_mixture(
    num: int, dims: int, components: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(num, dims) float32 features drawn around ``components`` random centres, and their labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(components, dims)).astype(np.float32)
    labels = rng.integers(components, size=num)
    features = centres[labels] + rng.normal(scale=0.5, size=(num, dims)).astype(np.float32)
    return features, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=120_000, help="number of features")
    parser.add_argument("--dims", type=int, default=384, help="feature dimensions")
    parser.add_argument("--k", type=int, default=80, help="number of clusters")
    parser.add_argument("--kmeans", choices=("minibatch", "full"), default="minibatch")
    parser.add_argument("--threads", type=int, default=2, help="BLAS/OpenMP threads")
    parser.add_argument("--masks", type=int, default=2000, help="masks (480 x 640) to annotate")
    args = parser.parse_args()
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(args.threads)
    # import after the thread variables are set, so that OpenMP/BLAS read them
    from sklearn.metrics import adjusted_rand_score

    from maskdistill.cluster.kmeans import cluster_features
    from maskdistill.discover.shard_file import full_resolution_mask
    from maskdistill.masks import mask_annotation

    features, truth = gaussian_mixture(args.num, args.dims, args.k, seed=0)
    start = time.perf_counter()
    result = cluster_features(features, k=args.k, method=args.kmeans, seed=1234)
    seconds = time.perf_counter() - start
    print(
        f"cluster: {args.num} x {args.dims} features, K={args.k}, {args.kmeans}, "
        f"{args.threads} threads: {seconds:.1f} s "
        f"(ARI vs mixture components {adjusted_rand_score(truth, result.labels):.3f})"
    )

    # images at COCO size: patch-8 grid masks upsampled to 480 x 640, then encoded
    rng = np.random.default_rng(1)
    records = []
    for _ in range(16):
        grid = np.zeros((60, 80), dtype=bool)
        y, x = rng.integers(0, 30), rng.integers(0, 40)
        grid[y : y + rng.integers(3, 30), x : x + rng.integers(3, 40)] = True
        size = (480, 640)
        records.append(
            {"grid_mask": grid, "patch_size": 8, "resized_size": size, "image_size": size}
        )
    start = time.perf_counter()
    for i in range(args.masks):
        mask = full_resolution_mask(records[i % len(records)])
        mask_annotation(mask, annotation_id=i + 1, image_id=i, category_id=1)
    seconds = time.perf_counter() - start
    print(
        f"coco: {args.masks} grid masks -> 480 x 640 masks -> annotations: "
        f"{1000 * seconds / args.masks:.2f} ms each"
    )
    print(f"machine: {machine_description()}, python {platform.python_version()}")


if __name__ == "__main__":
    main()
