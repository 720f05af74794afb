"""Stage 3 training data: the stage-2 pseudo ground truth as Mask R-CNN targets.

- The pseudo ground truth (a COCO instances dict) gives each image its masks and categories
  (category id = 1 + cluster index = the network's class); images without annotations are
  counted and left out, and so are degenerate masks (a box side under ``min_side`` pixels or
  fewer than ``min_area`` pixels: torchvision refuses empty boxes).
- Augmentation: a horizontal flip (p 0.5); the network's transform draws the training scale.
- Batches group images of the same orientation (wider than tall, or not), as torchvision's and
  detectron2's aspect-ratio grouping does, so that little of a batch is padding.
- Every random draw comes from generators seeded by (seed, epoch) or (seed, step, image): a
  resumed run sees exactly the batches and flips of the uninterrupted one.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maskdistill.images import load_image
from maskdistill.loader import image_tensor
from maskdistill.masks import decode_rle, mask_box, rle_area_and_box


@dataclass(frozen=True)
class TrainingImage:
    """One training image: where it is, its size and its pseudo masks (JSON RLE)."""

    file_name: str
    path: Path
    height: int
    width: int
    masks: tuple[dict[str, Any], ...]
    labels: tuple[int, ...]  # category ids, 1..K

    @property
    def landscape(self) -> bool:
        """Wider than tall: the aspect-ratio group."""
        return self.width > self.height


@dataclass
class TrainingSet:
    """The training images and what was left out of them."""

    images: list[TrainingImage]
    num_categories: int
    without_annotations: list[str] = field(default_factory=list)
    dropped_masks: int = 0  # degenerate masks left out


def training_set(
    coco: Mapping[str, Any],
    image_root: str | Path,
    *,
    min_side: int = 2,
    min_area: int = 4,
    source: str = "pseudo ground truth",
) -> TrainingSet:
    """The Mask R-CNN training images of a COCO instances dict (the stage-2 JSON).

    Args:
        coco: ``images``, ``annotations`` (compressed RLE ``segmentation``), ``categories``.
        image_root: the folder the ``file_name`` values are relative to.
        min_side: a mask whose tight box is narrower or lower than this (pixels) is dropped.
        min_area: a mask with fewer pixels is dropped.
        source: the JSON's path, named in errors.
    """
    try:
        by_image: dict[int, list[dict]] = defaultdict(list)
        for ann in coco["annotations"]:
            by_image[ann["image_id"]].append(ann)
        num_categories = len(coco["categories"])
        result = TrainingSet([], num_categories)
        for image in coco["images"]:
            kept = [
                ann
                for ann in by_image.get(image["id"], [])
                if _usable(ann["segmentation"], min_side, min_area)
            ]
            result.dropped_masks += len(by_image.get(image["id"], [])) - len(kept)
            if not kept:
                result.without_annotations.append(image["file_name"])
                continue
            result.images.append(
                TrainingImage(
                    file_name=image["file_name"],
                    path=Path(image_root) / image["file_name"],
                    height=int(image["height"]),
                    width=int(image["width"]),
                    masks=tuple(ann["segmentation"] for ann in kept),
                    labels=tuple(int(ann["category_id"]) for ann in kept),
                )
            )
    except (KeyError, TypeError) as error:
        raise ValueError(f"{source}: not a COCO instances JSON ({error!r} missing)") from error
    bad = [label for im in result.images for label in im.labels if not 1 <= label <= num_categories]
    if bad:
        raise ValueError(f"{source}: category id {bad[0]} outside 1..{num_categories}")
    return result


def _usable(rle: dict[str, Any], min_side: int, min_area: int) -> bool:
    """Whether a mask is large enough to train on (from its RLE, without decoding it)."""
    area, (_, _, w, h) = rle_area_and_box(rle)
    return w >= min_side and h >= min_side and area >= min_area


def target_of(masks: np.ndarray, labels: Sequence[int]) -> dict[str, torch.Tensor]:
    """torchvision's detection target of bool (N, H, W) masks and their labels.

    ``boxes`` float32 (N, 4) as (x1, y1, x2, y2) with exclusive ends (a mask covering columns
    x .. x + w - 1 has x2 = x + w), ``labels`` int64 (N,), ``masks`` uint8 (N, H, W).
    """
    boxes = []
    for mask in masks:
        x, y, w, h = mask_box(mask)
        boxes.append((x, y, x + w, y + h))
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(list(labels), dtype=torch.int64),
        "masks": torch.from_numpy(masks.astype(np.uint8)),
    }


def flip_target(target: dict[str, torch.Tensor], width: int) -> dict[str, torch.Tensor]:
    """The target of the horizontally flipped image: masks mirrored, x1' = W - x2, x2' = W - x1."""
    boxes = target["boxes"].clone()
    boxes[:, 0], boxes[:, 2] = width - target["boxes"][:, 2], width - target["boxes"][:, 0]
    return {**target, "boxes": boxes, "masks": target["masks"].flip(-1)}


class DistillDataset(torch.utils.data.Dataset):
    """Training samples keyed by (image index, step): the step seeds the image's flip."""

    def __init__(self, images: Sequence[TrainingImage], seed: int, flip: bool = True) -> None:
        self.images = list(images)
        self.seed = seed
        self.flip = flip

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        index, step = key
        item = self.images[index]
        image = load_image(item.path)
        if image.shape[:2] != (item.height, item.width):
            raise ValueError(
                f"{item.path}: image is {image.shape[:2]}, the pseudo ground truth says "
                f"{(item.height, item.width)}"
            )
        shape = (item.height, item.width)
        masks = np.stack([decode_rle(rle, shape, str(item.path)) for rle in item.masks])
        tensor, target = image_tensor(image), target_of(masks, item.labels)
        if self.flip and np.random.default_rng([self.seed, step, index]).random() < 0.5:
            tensor, target = tensor.flip(-1), flip_target(target, item.width)
        return tensor, target


def epoch_batches(
    groups: Sequence[bool], batch_size: int, seed: int, epoch: int
) -> list[list[int]]:
    """One epoch's batches: a (seed, epoch) permutation, cut into batches of one group.

    Images are taken in permutation order into the buffer of their group; a full buffer is a
    batch. Incomplete buffers at the end of the epoch are dropped.
    """
    order = np.random.default_rng([seed, epoch]).permutation(len(groups))
    buffers: dict[bool, list[int]] = defaultdict(list)
    batches = []
    for index in order.tolist():
        buffer = buffers[bool(groups[index])]
        buffer.append(index)
        if len(buffer) == batch_size:
            batches.append(list(buffer))
            buffer.clear()
    return batches


def step_batches(
    groups: Sequence[bool], batch_size: int, seed: int, start: int, stop: int
) -> Iterator[tuple[int, list[int]]]:
    """(step, image indices) for the steps ``start`` .. ``stop - 1`` of an endless run of epochs.

    Raises ValueError when no group holds ``batch_size`` images (no batch can be formed).
    """
    step, epoch = 0, 0
    while step < stop:
        batches = epoch_batches(groups, batch_size, seed, epoch)
        if not batches:
            raise ValueError(
                f"batch size {batch_size}: no {batch_size} training images of one orientation"
            )
        for batch in batches:
            if step >= stop:
                return
            if step >= start:
                yield step, batch
            step += 1
        epoch += 1
