"""The clustering feature of a discovered mask (pure): the CLS token of its crop or masked image.

``crop`` (the reference code): the original-resolution normalised image cropped to the mask's
box, zero-padded to multiples of P. ``masked`` (the paper's text): the image with every pixel
outside the mask zeroed. An empty mask gives the feature of the whole image. Images whose
longer side exceeds ``discover.feature_max_side`` are scaled down to it first, mask and box
with them (:func:`bound_longer_side`, :func:`scale_to_feature`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from maskdistill.models import vit
from maskdistill.models.vit import pad_to_patch

FEATURES = ("crop", "masked")


def crop_to_box(image: torch.Tensor, box: tuple[int, int, int, int], patch: int) -> torch.Tensor:
    """Crop a normalised (3, H, W) image to box (x, y, w, h), zero-padded to multiples of P.

    The reference clustering feature's input (``feature: crop``).

    Returns:
        (3, h', w') with h' >= h, w' >= w the next multiples of ``patch``.
    """
    x, y, w, h = (int(v) for v in box)
    if w <= 0 or h <= 0:
        raise ValueError(f"cannot crop to an empty box {box}")
    return pad_to_patch(image[:, y : y + h, x : x + w], patch)


def mask_outside(image: torch.Tensor, mask: np.ndarray) -> torch.Tensor:
    """The image with every pixel outside ``mask`` set to 0 (``feature: masked``).

    Args:
        image: (3, Hp, Wp) normalised, possibly zero-padded beyond the mask's (H, W).
        mask: (H, W) bool, H <= Hp, W <= Wp.

    Returns:
        (3, Hp, Wp); the padding stays 0.
    """
    height, width = mask.shape
    if height > image.shape[-2] or width > image.shape[-1]:
        raise ValueError(f"mask {mask.shape} is larger than the image {tuple(image.shape[-2:])}")
    keep = torch.zeros(image.shape[-2:], dtype=torch.bool, device=image.device)
    keep[:height, :width] = torch.from_numpy(np.asarray(mask, dtype=bool)).to(image.device)
    return image * keep


def bound_longer_side(image: np.ndarray, max_side: int) -> np.ndarray:
    """``image`` (H, W, 3) uint8 scaled down (PIL bilinear, antialiased) so that its longer side
    is ``max_side`` when it is longer; unchanged otherwise or when ``max_side`` is 0."""
    height, width = image.shape[:2]
    if max_side == 0 or max(height, width) <= max_side:
        return image
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))


def scale_to_feature(
    mask: np.ndarray, box: tuple[int, int, int, int], size: tuple[int, int]
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A mask (H, W) and its box (x, y, w, h) at the feature image's (H'', W'') ``size``.

    The mask by nearest neighbour (a mask too thin to survive is replaced by its box), the box
    by its corners (floored and ceiled, so it still covers the object); both unchanged when the
    sizes agree.
    """
    height, width = mask.shape
    if (height, width) == tuple(size):
        return mask, box
    rows, cols = size
    scaled = np.asarray(Image.fromarray(mask).resize((cols, rows), Image.Resampling.NEAREST))
    x, y, w, h = box
    if w <= 0 or h <= 0:
        return scaled, (0, 0, 0, 0)
    sx, sy = cols / width, rows / height
    x0, y0 = math.floor(x * sx), math.floor(y * sy)
    x1, y1 = min(cols, math.ceil((x + w) * sx)), min(rows, math.ceil((y + h) * sy))
    x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
    if not scaled.any():  # too thin to survive the scaling: its box stands in for it
        scaled = scaled.copy()
        scaled[y0:y1, x0:x1] = True
    return scaled, (x0, y0, x1 - x0, y1 - y0)


def feature_inputs(
    images: Sequence[torch.Tensor],
    masks: Sequence[np.ndarray],
    boxes: Sequence[tuple[int, int, int, int]],
    feature: str,
    patch: int,
) -> list[torch.Tensor]:
    """The feature backbone's input for each image: crop to the box or mask the outside.

    Args:
        images: (3, H', W') full-resolution normalised images padded to the feature patch.
        masks: (H, W) bool object masks at the original size; an empty one gives the whole
            image.
        boxes: (x, y, w, h) tight boxes of the masks.
    """
    inputs = []
    for image, mask, box in zip(images, masks, boxes, strict=True):
        if not mask.any():
            height, width = mask.shape
            inputs.append(crop_to_box(image, (0, 0, width, height), patch))
        elif feature == "crop":
            inputs.append(crop_to_box(image, box, patch))
        else:
            inputs.append(mask_outside(image, mask))
    return inputs


def cls_features(
    model: torch.nn.Module, inputs: Sequence[torch.Tensor], device: torch.device
) -> np.ndarray:
    """(len(inputs), D) float32 CLS features, batching the inputs of equal shape."""
    by_shape: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i, tensor in enumerate(inputs):
        by_shape[tuple(tensor.shape)].append(i)
    out: list[np.ndarray | None] = [None] * len(inputs)
    for indices in by_shape.values():
        batch = torch.stack([inputs[i] for i in indices]).to(device)
        features = vit.cls_features(model, batch).float().cpu().numpy()
        for i, feature in zip(indices, features, strict=True):
            out[i] = feature
    return np.stack(out)
