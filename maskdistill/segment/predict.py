"""Stage 5 predictions: label maps at the original image size, optionally refined by a dense CRF.

As the reference does it: each image is resized to the network's square input (as in
training); without a CRF each pixel of that input takes the argmax of the logits and the label
map is resized to the original size with nearest neighbours (OpenCV's rule, floor of the scaled
coordinate), so that memory holds one label map, not the logits, at the original size. With a
CRF, the logits are upsampled bilinearly to the original size, and the CRF refines their softmax
with the image in BGR order (the reference reads images with OpenCV). Batched: every image has
the same input shape.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F

from maskdistill.data.base import ImageRecord
from maskdistill.loader import PredictionRun, image_batches
from maskdistill.models.norm import Normalization
from maskdistill.runtime import autocast
from maskdistill.segment.crf import CRFSettings, dense_crf
from maskdistill.segment.data import network_input


@dataclass
class PredictionInput:
    """One decoded image: the network's input and the original pixels (for the CRF)."""

    tensor: torch.Tensor  # (3, size, size) normalised
    image: np.ndarray | None  # (H, W, 3) uint8, kept only for the CRF


def _prepare(
    image: np.ndarray, record: ImageRecord, size: int, norm: Normalization, keep: bool
) -> PredictionInput:
    return PredictionInput(network_input(image, size, norm), image if keep else None)


def _same(_: object) -> int:
    return 0  # every image has the network's input shape


def predict_label_maps(
    model: torch.nn.Module,
    records: Sequence[ImageRecord],
    run: PredictionRun,
    *,
    size: int,
    norm: Normalization,
    crf: CRFSettings | None = None,
) -> Iterator[tuple[ImageRecord, np.ndarray]]:
    """Yield (record, (H, W) int64 labels) for each readable image.

    Args:
        model: the DeepLab in evaluation mode, on ``run.device``.
        run: device, batch size, precision, bad images (:class:`~maskdistill.loader.PredictionRun`).
        size: the network's input side (the training ``size``).
        norm: the network's input normalisation.
        crf: refine with a dense CRF (None: plain argmax).
    """
    batches = image_batches(
        records,
        prepare=partial(_prepare, size=size, norm=norm, keep=crf is not None),
        predict_key=_same,
        actual_key=_same,
        run=run,
        desc="segment predict" if crf is None else "segment predict + CRF",
    )
    with torch.inference_mode():
        for items in batches:
            inputs = torch.stack([item.value.tensor for item in items]).to(run.device)
            with autocast(run.device, run.precision):
                logits = model(inputs)["out"].float()
            for item, item_logits in zip(items, logits, strict=True):
                if crf is None:
                    yield item.record, resized_argmax(item_logits, item.image_size)
                    continue
                full = F.interpolate(
                    item_logits[None], size=item.image_size, mode="bilinear", align_corners=False
                )[0]
                probabilities = full.softmax(dim=0).cpu().numpy()
                bgr = np.ascontiguousarray(item.value.image[:, :, ::-1])
                yield item.record, dense_crf(bgr, probabilities, crf)


def resized_argmax(logits: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """(C, h, w) logits -> (H, W) int64 labels: argmax at (h, w), then nearest-neighbour resize
    to ``size`` (source pixel floor(y h / H), floor(x w / W), as OpenCV's INTER_NEAREST)."""
    labels = logits.argmax(dim=0)[None, None].float()
    return F.interpolate(labels, size=tuple(size), mode="nearest")[0, 0].long().cpu().numpy()
