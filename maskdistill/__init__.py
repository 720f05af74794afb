"""MaskDistill: unsupervised semantic segmentation (arXiv:2206.06363) as a Snakemake pipeline.

The package's ``__init__`` imports nothing, so that importing one stage's module never pulls in
another's (and a stage's code fingerprint covers only the modules it imports).
"""

__version__ = "0.1.0"
