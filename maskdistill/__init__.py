"""MaskDistill: unsupervised semantic segmentation (arXiv:2206.06363) as a Snakemake pipeline."""

__version__ = "0.1.0"
