"""Stage 3, distill: Mask R-CNN trained on the stage-2 pseudo ground truth, then predicting.

:mod:`.data` turns the pseudo ground truth into training samples and batches, :mod:`.train`
is the training loop, :mod:`.predict` the batched inference that writes scored masks, and
:mod:`.evaluate` the class-agnostic mask AP. The network is :mod:`maskdistill.models.maskrcnn`.
"""
