"""Stage 1, discover: one object mask per image from a self-supervised ViT's attention.

:mod:`.mask` is the pure per-image algorithm, :mod:`.feature` the clustering feature of a mask,
:mod:`.batch` the settings and the batched step that turns images into shard records.
"""
