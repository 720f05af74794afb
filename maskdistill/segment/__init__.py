"""Stage 5, segment: DeepLab-v3 trained on the stage-4 label maps, its predictions, dense CRF,
CRF rounds and the linear probe.

:mod:`.loss` is the hard-pixel-mining cross-entropy, :mod:`.data` the training samples and
their augmentation, :mod:`.train` the training loop (and the linear probe's), :mod:`.predict`
the batched inference, :mod:`.crf` the dense CRF. The network is
:mod:`maskdistill.models.deeplab`.
"""
