"""Stage 1 at scale: object masks, boxes, clustering features and attention maps for many images.

The pure per-image algorithm lives in :mod:`maskdistill.discover` and the ViT plumbing in
:mod:`maskdistill.vit`; this module feeds them batches:

- images are decoded and preprocessed in DataLoader workers;
- images whose padded input has the same shape are batched together (bucketing), in a fixed
  order (padded shape, then file name) that does not depend on the batch size, so a run's
  records come out in the same order whatever the batch size or number of workers;
- memory is bounded by one batch: records are yielded as soon as their batch is done;
- everything runs under ``torch.inference_mode`` with optional fp16/bf16 autocast.

Shard assignment is a stable hash of the file name (:func:`shard_of`).
"""

from __future__ import annotations

import contextlib
import logging
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from maskdistill import discover, vit
from maskdistill.data.base import ImageRecord
from maskdistill.images import BadImageError, load_or_skip
from maskdistill.shards import mask_box, shard_of, upsample_grid_mask

log = logging.getLogger(__name__)

FEATURES = ("crop", "masked")
PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
DEVICES = ("auto", "cpu", "cuda")
RANDOM_BACKBONE_WARNING = (
    "backbone %r is a random-initialised ViT: masks from a random ViT are noise (the demo "
    "only shows the mechanics). For real runs set discover.backbone to "
    "vit_small_patch16_224.dino (or vit_small_patch8_224.dino, or a DINO checkpoint path)"
)


@dataclass(frozen=True)
class DiscoverSettings:
    """The settings that decide a record's content (METHOD.md stage 1 and the stage-2 feature).

    Attributes:
        resize: shorter side of the backbone's input in pixels (reference: 640).
        heads: the first ``heads`` heads are averaged for the CLS affinity (reference: 5).
        topk: fraction of the patches proposed (reference: 0.4).
        mass: attention-mass filter threshold (reference: 0.5).
        center_keys: subtract each image's mean key before the patch graph (not the reference).
        feature: "crop" (CLS token of the image cropped to the mask's box) or "masked" (of the
            image with everything outside the mask zeroed).
    """

    resize: int = 640
    heads: int = 5
    topk: float = 0.4
    mass: float = 0.5
    center_keys: bool = False
    feature: str = "crop"

    def __post_init__(self) -> None:
        checks = {
            "resize": self.resize >= 1,
            "heads": self.heads >= 1,
            "topk": 0 < self.topk <= 1,
            "mass": 0 < self.mass <= 1,
            "feature": self.feature in FEATURES,
        }
        wanted = {
            "resize": ">= 1",
            "heads": ">= 1",
            "topk": "in (0, 1]",
            "mass": "in (0, 1]",
            "feature": f"one of {FEATURES}",
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"{name}: expected {wanted[name]}, got {getattr(self, name)!r}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Backbones:
    """The mask backbone and the clustering-feature backbone (possibly the same module)."""

    backbone: torch.nn.Module
    feature: torch.nn.Module


def load_backbones(
    spec: str,
    feature_spec: str,
    *,
    pretrained: bool,
    num_heads: int | None,
    device: torch.device,
) -> Backbones:
    """Load both backbones (``feature_spec`` "same" or equal to ``spec``: one shared model)."""
    for name in (spec, feature_spec):
        if name.startswith("random:"):
            log.warning(RANDOM_BACKBONE_WARNING, name)
    backbone = vit.load_backbone(spec, pretrained=pretrained, num_heads=num_heads, device=device)
    if feature_spec in ("same", spec):
        return Backbones(backbone, backbone)
    feature = vit.load_backbone(feature_spec, pretrained=pretrained, device=device)
    return Backbones(backbone, feature)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is an error."""
    if name not in DEVICES:
        raise ValueError(f"device: expected one of {DEVICES}, got {name!r}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda: no CUDA GPU is available (use --device cpu or auto)")
    return torch.device(name)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast to fp16/bf16 on ``device``, or nothing for fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {tuple(PRECISIONS)}, got {precision!r}")
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def select_shard(records: Sequence[ImageRecord], shard: int, num_shards: int) -> list[ImageRecord]:
    """The records of shard ``shard`` (0-based) out of ``num_shards``."""
    if num_shards < 1 or not 0 <= shard < num_shards:
        raise ValueError(f"shard {shard} of {num_shards}: expected 0 <= shard < num_shards")
    return [r for r in records if shard_of(r.file_name, num_shards) == shard]


def padded_shape(size: tuple[int, int], resize: int, patch: int) -> tuple[int, int]:
    """The backbone input shape (Hp, Wp) predicted from an image's (H, W), for bucketing.

    The shorter side becomes ``resize``, the longer ``int(long * resize / short)`` (as
    :func:`maskdistill.vit.preprocess`), then both round up to multiples of ``patch``.
    A wrong prediction only costs speed: batches are regrouped by the real shapes.
    """
    short, long = sorted(size)
    resized_long = int(long * resize / short)
    height, width = (resize, resized_long) if size[0] <= size[1] else (resized_long, resize)
    return (max(1, -(-height // patch)) * patch, max(1, -(-width // patch)) * patch)


def bucket_batches(
    shapes: Sequence[tuple[int, int]], names: Sequence[str], batch_size: int
) -> list[list[int]]:
    """Batches of indices whose ``shapes`` are equal, ordered by (shape, name).

    The concatenated batches are the same sequence for every ``batch_size``.
    """
    if batch_size < 1:
        raise ValueError(f"batch size: expected >= 1, got {batch_size}")
    order = sorted(range(len(shapes)), key=lambda i: (shapes[i], names[i]))
    buckets: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i in order:
        buckets[tuple(shapes[i])].append(i)
    return [
        bucket[start : start + batch_size]
        for bucket in buckets.values()
        for start in range(0, len(bucket), batch_size)
    ]


@dataclass
class _Item:
    """One decoded image: backbone input, full-resolution normalised image, or why it failed."""

    record: ImageRecord
    image: torch.Tensor | None = None  # (3, Hp, Wp) resized, normalised, zero-padded
    resized_size: tuple[int, int] = (0, 0)
    image_size: tuple[int, int] = (0, 0)  # (H, W) original
    full: torch.Tensor | None = None  # (3, H, W) original size, normalised, padded to the
    # feature backbone's patch size
    skipped: tuple[str, str] | None = None
    error: BadImageError | None = None


class ImageSet(torch.utils.data.Dataset):
    """Decodes and preprocesses records (runs in DataLoader workers).

    Each item holds the backbone input and, unless ``feature_patch`` is None, the
    full-resolution image padded to ``feature_patch`` for the clustering feature.
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        resize: int,
        patch: int,
        feature_patch: int | None,
        on_bad_image: str,
    ) -> None:
        self.records = list(records)
        self.resize = resize
        self.patch = patch
        self.feature_patch = feature_patch
        self.on_bad_image = on_bad_image

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> _Item:
        record = self.records[index]
        skipped: list[tuple[str, str]] = []
        try:
            image = load_or_skip(record.path, self.on_bad_image, skipped, name=record.file_name)
        except BadImageError as error:  # re-raised by the main process, not the worker
            return _Item(record, error=error)
        if image is None:
            return _Item(record, skipped=skipped[0])
        tensor, resized = vit.preprocess(image, self.resize, self.patch)
        full = None
        if self.feature_patch is not None:
            full = vit.preprocess_full(image, self.feature_patch)
        return _Item(record, tensor, tuple(resized), image.shape[:2], full)


def _feature_inputs(
    items: Sequence[_Item],
    masks: Sequence[np.ndarray],
    boxes: Sequence[tuple[int, int, int, int]],
    feature: str,
    patch: int,
) -> list[torch.Tensor]:
    """The feature backbone's input for each item: crop to the box or mask the outside.

    An empty mask gives the feature of the whole image (its box is the whole image).
    """
    inputs = []
    for item, mask, box in zip(items, masks, boxes, strict=True):
        if not mask.any():
            height, width = item.image_size
            inputs.append(discover.crop_to_box(item.full, (0, 0, width, height), patch))
        elif feature == "crop":
            inputs.append(discover.crop_to_box(item.full, box, patch))
        else:
            inputs.append(discover.mask_outside(item.full, mask))
    return inputs


def _cls_features(model: torch.nn.Module, inputs: Sequence[torch.Tensor], device) -> np.ndarray:
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


def batch_masks(
    model: torch.nn.Module,
    images: torch.Tensor,
    settings: DiscoverSettings,
    precision: str = "fp32",
) -> list[tuple[np.ndarray, int, torch.Tensor]]:
    """Object masks of a batch of equal-shape images (METHOD.md stage 1, steps 1-8).

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
        grid_mask, source = discover.object_mask(
            qi,
            ki,
            grid_shape,
            heads=settings.heads,
            topk=settings.topk,
            mass=settings.mass,
            center_keys=settings.center_keys,
            num_prefix_tokens=prefix,
        )
        affinity = discover.cls_affinity(qi, ki, settings.heads, prefix).reshape(grid_shape)
        out.append((grid_mask, source, affinity))
    return out


def discover_batch(
    items: Sequence[_Item],
    models: Backbones,
    settings: DiscoverSettings,
    device: torch.device,
    precision: str = "fp32",
) -> list[dict[str, Any]]:
    """Shard records (see :func:`maskdistill.shards.read_shard`) for images of one input shape."""
    patch = vit.patch_size(models.backbone)
    images = torch.stack([item.image for item in items]).to(device)
    results, masks, boxes = [], [], []
    for item, (grid_mask, source, affinity) in zip(
        items, batch_masks(models.backbone, images, settings, precision), strict=True
    ):
        mask = upsample_grid_mask(grid_mask, patch, item.resized_size, item.image_size)
        record = item.record
        box = mask_box(mask)
        results.append(
            {
                "id": record.id,
                "file_name": record.file_name,
                "image_size": item.image_size,
                "resized_size": item.resized_size,
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
    inputs = _feature_inputs(items, masks, boxes, settings.feature, vit.patch_size(models.feature))
    with autocast(device, precision):
        features = _cls_features(models.feature, inputs, device)
    for result, feature in zip(results, features, strict=True):
        result["feature"] = feature
    return results


def _padded_shapes(
    records: Sequence[ImageRecord],
    resize: int,
    patch: int,
    on_bad_image: str,
    skipped: list[tuple[str, str]],
) -> tuple[list[ImageRecord], list[tuple[int, int]]]:
    """Records whose header is readable and their padded input shapes (for bucketing)."""
    usable, shapes = [], []
    for record in records:
        try:
            size = record.size
        except BadImageError as error:
            if on_bad_image == "error":
                raise
            log.warning("skipping %s", error)
            skipped.append((record.file_name, error.reason))
            continue
        usable.append(record)
        shapes.append(padded_shape(size, resize, patch))
    return usable, shapes


def decoded_batches(
    records: Sequence[ImageRecord],
    *,
    resize: int,
    patch: int,
    feature_patch: int | None,
    batch_size: int,
    workers: int = 0,
    on_bad_image: str = "error",
    skipped: list[tuple[str, str]] | None = None,
    progress: bool = True,
) -> Iterator[list[_Item]]:
    """Decoded, preprocessed images in batches of one input shape, in (shape, name) order.

    Decoding runs in ``workers`` DataLoader processes; bad images are raised or, with
    ``on_bad_image="skip"``, appended to ``skipped`` as (file_name, reason).
    """
    skipped = [] if skipped is None else skipped
    usable, shapes = _padded_shapes(records, resize, patch, on_bad_image, skipped)
    batches = bucket_batches(shapes, [r.file_name for r in usable], batch_size)
    loader = DataLoader(
        ImageSet(usable, resize, patch, feature_patch, on_bad_image),
        batch_sampler=batches,
        num_workers=workers,
        collate_fn=list,
    )
    with tqdm(total=len(records), unit="img", desc="discover", disable=not progress) as bar:
        bar.update(len(records) - len(usable))
        for items in loader:
            by_shape: dict[tuple[int, ...], list[_Item]] = defaultdict(list)
            for item in items:
                if item.error is not None:
                    raise item.error
                if item.skipped is not None:
                    skipped.append(item.skipped)
                    continue
                # a header size can disagree with the decoded image: regroup by real shape
                by_shape[tuple(item.image.shape)].append(item)
            yield from by_shape.values()
            bar.update(len(items))


def discover_records(
    records: Sequence[ImageRecord],
    models: Backbones,
    settings: DiscoverSettings,
    *,
    device: torch.device,
    batch_size: int = 8,
    workers: int = 0,
    precision: str = "fp32",
    on_bad_image: str = "error",
    skipped: list[tuple[str, str]] | None = None,
    progress: bool = True,
) -> Iterator[dict[str, Any]]:
    """Yield one shard record per readable image, in (padded shape, file name) order.

    Args:
        records: the images (e.g. one shard's records).
        models: backbones, already on ``device`` and in eval mode.
        settings: the algorithm's settings.
        device: where the models run.
        batch_size: images per forward pass (memory is bounded by one batch).
        workers: DataLoader worker processes decoding images (0: in this process).
        precision: "fp32", or "fp16"/"bf16" autocast (masks may then differ from fp32).
        on_bad_image: "error" raises BadImageError; "skip" appends (file_name, reason) to
            ``skipped`` and goes on.
        skipped: the skip list to append to.
        progress: show a tqdm progress bar.
    """
    heads = models.backbone.blocks[-1].attn.num_heads
    if settings.heads > heads:
        raise ValueError(f"heads: {settings.heads} requested, the backbone has only {heads}")
    batches = decoded_batches(
        records,
        resize=settings.resize,
        patch=vit.patch_size(models.backbone),
        feature_patch=vit.patch_size(models.feature),
        batch_size=batch_size,
        workers=workers,
        on_bad_image=on_bad_image,
        skipped=skipped,
        progress=progress,
    )
    with torch.inference_mode():
        for items in batches:
            yield from discover_batch(items, models, settings, device, precision)
