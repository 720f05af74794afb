"""Mask R-CNN predictions for many images: batched, under ``inference_mode``, as COCO results.

Each prediction is a COCO results entry: ``image_id``, ``file_name`` (the join key),
``category_id`` (1..K, the cluster), ``score``, ``bbox`` [x, y, w, h] (the detector's box) and
``segmentation``, the compressed RLE of the mask thresholded at probability 0.5, at the
original image size (pasted and encoded one detection at a time: memory holds one full-size
mask, not one per detection). Images are batched by size, in (size, file name) order.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torchvision.models.detection.roi_heads import paste_masks_in_image

from maskdistill.data.base import ImageRecord
from maskdistill.loader import PredictionRun, image_batches, image_tensor
from maskdistill.masks import encode_rle
from maskdistill.runtime import autocast

MASK_THRESHOLD = 0.5


def _prepare(image: np.ndarray, record: ImageRecord) -> torch.Tensor:
    return image_tensor(image)


def _header_size(size: tuple[int, int]) -> tuple[int, int]:
    return tuple(size)


def _tensor_size(tensor: torch.Tensor) -> tuple[int, int]:
    return tuple(tensor.shape[-2:])


def detections(
    output: Mapping[str, torch.Tensor],
    masks: Iterable[np.ndarray],
    image_id: int,
    file_name: str,
) -> list[dict[str, Any]]:
    """COCO results entries of one image's detections (in the output's score order).

    Args:
        output: ``boxes`` (N, 4) x1 y1 x2 y2 at the image's size, ``labels`` (N,) category
            ids 1..K, ``scores`` (N,).
        masks: the N bool (H, W) masks at the image's size, in the same order; pasted one at a
            time by the caller (:func:`pasted_masks`), so that memory holds one full-size mask.
    """
    boxes = output["boxes"].float().cpu().numpy()
    labels = output["labels"].cpu().numpy()
    scores = output["scores"].float().cpu().numpy()
    entries = []
    for box, label, score, mask in zip(boxes, labels, scores, masks, strict=True):
        x1, y1, x2, y2 = (float(v) for v in box)
        entries.append(
            {
                "image_id": int(image_id),
                "file_name": file_name,
                "category_id": int(label),
                "score": round(float(score), 5),
                "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                "segmentation": encode_rle(mask),
            }
        )
    return entries


def pasted_masks(output: Mapping[str, torch.Tensor], size: tuple[int, int]) -> Iterator[np.ndarray]:
    """Each detection's mask at the image's (H, W), thresholded at probability 0.5.

    ``output["masks"]`` holds the mask head's (N, 1, M, M) probabilities per box (the network
    of :func:`maskdistill.models.maskrcnn.for_prediction` does not paste them); each is pasted
    into its box with torchvision's ``paste_masks_in_image``, one at a time.
    """
    for mask, box in zip(output["masks"], output["boxes"], strict=True):
        pasted = paste_masks_in_image(mask[None].float(), box[None].float(), size)[0, 0]
        yield (pasted > MASK_THRESHOLD).cpu().numpy()


def predict_images(
    model: torch.nn.Module,
    records: Sequence[ImageRecord],
    image_ids: Mapping[str, int],
    run: PredictionRun,
) -> Iterator[list[dict[str, Any]]]:
    """Yield each readable image's predictions (a list, possibly empty), batched by image size.

    Args:
        model: the Mask R-CNN in evaluation mode, on ``run.device``.
        records: the images.
        image_ids: file name -> image id of the predictions (the pseudo ground truth's).
        run: device, batch size, precision, bad images (:class:`~maskdistill.loader.PredictionRun`).
    """
    batches = image_batches(
        records,
        prepare=_prepare,
        predict_key=_header_size,
        actual_key=_tensor_size,
        run=run,
        desc="distill predict",
    )
    with torch.inference_mode():
        for items in batches:
            images = [item.value.to(run.device) for item in items]
            with autocast(run.device, run.precision):
                outputs = model(images)
            for item, output in zip(items, outputs, strict=True):
                name = item.record.file_name
                masks = pasted_masks(output, item.image_size)
                yield detections(output, masks, image_ids[name], name)
