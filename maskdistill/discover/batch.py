"""Stage 1 at scale: object masks, boxes, clustering features and attention maps for many images.

The per-image algorithm is :mod:`maskdistill.discover.mask`, the feature :mod:`.feature`, the ViT
plumbing :mod:`maskdistill.models.vit` and the batched image loading :mod:`maskdistill.loader`;
this module feeds them batches of images whose padded input has the same shape, under
``torch.inference_mode`` with optional fp16/bf16 autocast, and yields one shard record per
image in (padded shape, file name) order, whatever the batch size or number of workers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch

from maskdistill.config import Settings
from maskdistill.data.base import ImageRecord
from maskdistill.discover.feature import (
    FEATURES,
    bound_longer_side,
    cls_features,
    feature_inputs,
    scale_to_feature,
)
from maskdistill.discover.mask import cls_affinity, object_mask
from maskdistill.loader import Loaded, PredictionRun, image_batches
from maskdistill.masks import mask_box, upsample_grid_mask
from maskdistill.models import vit
from maskdistill.models.norm import Normalization
from maskdistill.runtime import autocast


@dataclass(frozen=True)
class DiscoverSettings(Settings):
    """The settings that decide a record's content (docs/method.md, stage 1 and the feature).

    Defaults: the config schema's ``discover`` section (:meth:`from_config`).

    Attributes:
        resize: shorter side of the backbone's input in pixels (reference: 640).
        heads: the first ``heads`` heads are averaged for the CLS affinity (reference: 5).
        topk: fraction of the patches proposed (reference: 0.4).
        mass: attention-mass filter threshold (reference: 0.5).
        center_keys: subtract each image's mean key before the patch graph (not the reference).
        feature: "crop" (CLS token of the image cropped to the mask's box) or "masked" (of the
            image with everything outside the mask zeroed).
        feature_max_side: the feature's image is scaled down to this longer side when it is
            larger (0: always the original size, as the reference), so that a large photo
            costs about as much as a VOC image.
    """

    resize: int
    heads: int
    topk: float
    mass: float
    center_keys: bool
    feature: str
    feature_max_side: int = 0

    def __post_init__(self) -> None:
        checks = {
            "resize": (self.resize >= 1, ">= 1"),
            "heads": (self.heads >= 1, ">= 1"),
            "topk": (0 < self.topk <= 1, "in (0, 1]"),
            "mass": (0 < self.mass <= 1, "in (0, 1]"),
            "feature": (self.feature in FEATURES, f"one of {FEATURES}"),
            "feature_max_side": (self.feature_max_side >= 0, ">= 0"),
        }
        for name, (ok, wanted) in checks.items():
            if not ok:
                raise ValueError(f"{name}: expected {wanted}, got {getattr(self, name)!r}")

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def padded_shape(size: tuple[int, int], resize: int, patch: int) -> tuple[int, int]:
    """The backbone input shape (Hp, Wp) predicted from an image's (H, W), for bucketing.

    The shorter side becomes ``resize``, the longer ``int(long * resize / short)`` (as
    :func:`maskdistill.models.vit.preprocess`), then both round up to multiples of ``patch``.
    """
    short, long = sorted(size)
    resized_long = int(long * resize / short)
    height, width = (resize, resized_long) if size[0] <= size[1] else (resized_long, resize)
    return (max(1, -(-height // patch)) * patch, max(1, -(-width // patch)) * patch)


@dataclass
class DiscoverInput:
    """One decoded image, prepared for both backbones."""

    image: torch.Tensor  # (3, Hp, Wp) resized, normalised, zero-padded to the mask patch
    resized_size: tuple[int, int]  # (H', W') before padding
    full: torch.Tensor  # (3, H'', W'') the feature's image, normalised, padded to its patch
    feature_size: tuple[int, int]  # (H'', W''): the original size, or scaled down to the bound


@dataclass(frozen=True)
class PrepareDiscoverInput:
    """``prepare`` of :func:`maskdistill.loader.image_batches` for discover (picklable)."""

    resize: int
    patch: int
    norm: Normalization
    feature_patch: int
    feature_norm: Normalization
    feature_max_side: int = 0

    def __call__(self, image: np.ndarray, record: ImageRecord) -> DiscoverInput:
        tensor, resized = vit.preprocess(image, self.resize, self.patch, self.norm)
        bounded = bound_longer_side(image, self.feature_max_side)
        full = vit.preprocess_full(bounded, self.feature_patch, self.feature_norm)
        return DiscoverInput(tensor, tuple(resized), full, bounded.shape[:2])


def _input_shape(value: DiscoverInput) -> tuple[int, ...]:
    return tuple(value.image.shape)


def batch_masks(
    model: torch.nn.Module,
    images: torch.Tensor,
    settings: DiscoverSettings,
    precision: str = "fp32",
) -> list[tuple[np.ndarray, int, torch.Tensor]]:
    """Object masks of a batch of equal-shape images (docs/method.md, stage 1, steps 1-8).

    Args:
        model: the mask backbone.
        images: (B, 3, Hp, Wp) preprocessed, on the model's device; Hp, Wp multiples of P.

    Returns:
        Per image: grid mask bool (h, w), source patch index, CLS affinity (h, w) float32.
    """
    patch = vit.patch_size(model)
    prefix = vit.num_prefix_tokens(model)
    grid_shape = (images.shape[2] // patch, images.shape[3] // patch)
    with autocast(images.device, precision):
        q, k = vit.last_block_qk(model, images)
    q, k = q.float(), k.float()
    out = []
    for qi, ki in zip(q, k, strict=True):
        grid_mask, source = object_mask(
            qi,
            ki,
            grid_shape,
            heads=settings.heads,
            topk=settings.topk,
            mass=settings.mass,
            center_keys=settings.center_keys,
            num_prefix_tokens=prefix,
        )
        affinity = cls_affinity(qi, ki, settings.heads, prefix).reshape(grid_shape)
        out.append((grid_mask, source, affinity))
    return out


def discover_batch(
    items: Sequence[Loaded],
    models: vit.Backbones,
    settings: DiscoverSettings,
    device: torch.device,
    precision: str = "fp32",
) -> list[dict[str, Any]]:
    """Shard records (see :func:`maskdistill.discover.shard_file.read_shard`) for images of one
    input shape."""
    patch = vit.patch_size(models.backbone)
    images = torch.stack([item.value.image for item in items]).to(device)
    results, masks, boxes = [], [], []
    for item, (grid_mask, source, affinity) in zip(
        items, batch_masks(models.backbone, images, settings, precision), strict=True
    ):
        mask = upsample_grid_mask(grid_mask, patch, item.value.resized_size, item.image_size)
        record = item.record
        box = mask_box(mask)
        results.append(
            {
                "id": record.id,
                "file_name": record.file_name,
                "image_size": item.image_size,
                "resized_size": item.value.resized_size,
                "patch_size": patch,
                "grid_shape": grid_mask.shape,
                "source": int(source),
                "grid_mask": grid_mask,
                "box": box,
                "empty": not mask.any(),
                "attention": affinity.numpy(),
            }
        )
        masks.append(mask)
        boxes.append(box)
    scaled = [
        scale_to_feature(mask, box, item.value.feature_size)
        for mask, box, item in zip(masks, boxes, items, strict=True)
    ]
    inputs = feature_inputs(
        [item.value.full for item in items],
        [mask for mask, _ in scaled],
        [box for _, box in scaled],
        settings.feature,
        vit.patch_size(models.feature),
    )
    with autocast(device, precision):
        features = cls_features(models.feature, inputs, device)
    for result, feature in zip(results, features, strict=True):
        result["feature"] = feature
    return results


def input_batches(
    records: Sequence[ImageRecord],
    models: vit.Backbones,
    settings: DiscoverSettings,
    run: PredictionRun,
) -> Iterator[list[Loaded]]:
    """Decoded images prepared for both backbones, in batches of one padded input shape.

    Arguments as :func:`discover_records`.
    """
    patch = vit.patch_size(models.backbone)
    prepare = PrepareDiscoverInput(
        settings.resize,
        patch,
        vit.normalization(models.backbone),
        vit.patch_size(models.feature),
        vit.normalization(models.feature),
        settings.feature_max_side,
    )
    return image_batches(
        records,
        prepare=prepare,
        predict_key=partial(padded_shape, resize=settings.resize, patch=patch),
        actual_key=_input_shape,
        run=run,
        desc="discover",
    )


def discover_records(
    records: Sequence[ImageRecord],
    models: vit.Backbones,
    settings: DiscoverSettings,
    run: PredictionRun,
) -> Iterator[dict[str, Any]]:
    """Yield one shard record per readable image, in (padded shape, file name) order.

    Args:
        records: the images (e.g. one shard's records).
        models: backbones, already on ``run.device`` and in eval mode.
        settings: the algorithm's settings.
        run: device, batch size (memory is bounded by one batch), precision ("fp16"/"bf16"
            autocast: masks may then differ from fp32), bad images.
    """
    heads = models.backbone.blocks[-1].attn.num_heads
    if settings.heads > heads:
        raise ValueError(f"heads: {settings.heads} requested, the backbone has only {heads}")
    with torch.inference_mode():
        for items in input_batches(records, models, settings, run):
            yield from _discover_or_skip(items, models, settings, run)


def _out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an allocation failure (CUDA's, or the CPU allocator's)."""
    if isinstance(error, torch.OutOfMemoryError | MemoryError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and (
        "can't allocate memory" in text or "out of memory" in text
    )


def _discover_or_skip(
    items: Sequence[Loaded], models: vit.Backbones, settings: DiscoverSettings, run: PredictionRun
) -> list[dict[str, Any]]:
    """:func:`discover_batch`; a batch that runs out of memory is retried one image at a time,
    and an image that alone runs out of memory is skipped (``on_bad_image: skip``) or stops the
    shard with its name (``error``): the rest of the shard is kept either way."""
    try:
        return discover_batch(items, models, settings, run.device, run.precision)
    except Exception as error:
        if not _out_of_memory(error):
            raise
        if run.device.type == "cuda":
            torch.cuda.empty_cache()
        if len(items) > 1:
            return [
                record
                for item in items
                for record in _discover_or_skip([item], models, settings, run)
            ]
        (item,) = items
        reason = f"out of memory in discover at {item.image_size[1]} x {item.image_size[0]} px"
        if run.on_bad_image != "skip":
            raise MemoryError(
                f"{item.record.path}: {reason}; lower discover.feature_max_side or "
                "resources.discover.batch_size, or set on_bad_image: skip"
            ) from error
        run.skipped.append((item.record.file_name, reason))
        return []
