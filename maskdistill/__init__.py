"""MaskDistill: unsupervised semantic segmentation (arXiv:2206.06363) as a Snakemake pipeline."""

__version__ = "0.1.0"

from maskdistill.shards import full_resolution_mask, read_shard  # noqa: E402

__all__ = ["__version__", "full_resolution_mask", "read_shard"]
