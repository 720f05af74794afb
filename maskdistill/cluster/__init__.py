"""Stage 2, cluster: K-means over the stage-1 mask features, and the pseudo ground truth.

:mod:`.kmeans` clusters the features, :mod:`.pseudo_gt` turns the cluster labels into the COCO
pseudo ground truth and its statistics.
"""
