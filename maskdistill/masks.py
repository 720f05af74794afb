"""Masks, the way every stage stores and combines them: boxes, RLE, COCO annotations, label maps.

Conventions (data/README.md):

- a mask is a bool (H, W) array; a box is (x, y, w, h) in pixels with exclusive ends (it covers
  columns x .. x + w - 1);
- RLE is pycocotools' compressed encoding of the Fortran-ordered uint8 mask, made JSON-ready as
  ``{"size": [H, W], "counts": str}``;
- a label map is (H, W) uint8: 0 background, 1..K classes or clusters, ``IGNORE`` (255) where the
  ground truth says "do not score"; it is saved as a palette PNG with the PASCAL VOC colours.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from maskdistill.images import BadImageError, max_pixels, pillow_errors
from maskdistill.io import atomic_path
from maskdistill.names import output_path

IGNORE = 255
"""Label of pixels that no metric scores (VOC's object boundaries, COCO's crowd regions)."""

OVERLAPS = ("skip", "overwrite", "fill", "reference")
"""How :func:`paint_label_map` treats a mask that meets pixels painted before it."""


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Tight box (x, y, w, h) of a bool (H, W) mask in pixels; (0, 0, 0, 0) when empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return (0, 0, 0, 0)
    return (int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1))


def upsample_grid_mask(
    grid_mask: np.ndarray,
    patch_size: int,
    resized_size: tuple[int, int],
    image_size: tuple[int, int],
) -> np.ndarray:
    """A patch-grid mask at image resolution, as the reference code does it.

    Nearest upsampling by ``patch_size`` (h, w) -> (h P, w P), crop to the resized image
    ``resized_size`` (H', W') (dropping the zero padding), nearest resize to the original
    ``image_size`` (H, W). Returns bool (H, W).
    """
    full = np.repeat(np.repeat(grid_mask.astype(np.uint8), patch_size, 0), patch_size, 1)
    full = full[: resized_size[0], : resized_size[1]]
    if tuple(full.shape) != tuple(image_size):
        resized = Image.fromarray(full).resize(
            (image_size[1], image_size[0]), resample=Image.Resampling.NEAREST
        )
        full = np.asarray(resized)
    return full.astype(bool)


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """JSON-ready compressed RLE ``{"size": [H, W], "counts": str}`` of a bool (H, W) mask."""
    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _pycocotools_rle(rle: dict[str, Any]) -> dict[str, Any]:
    """A JSON RLE as pycocotools takes it (``counts`` as bytes)."""
    counts = rle["counts"]
    return {
        "size": list(rle["size"]),
        "counts": counts.encode() if isinstance(counts, str) else counts,
    }


def rle_shape(rle: Any, source: str = "RLE") -> tuple[int, int]:
    """The (H, W) an RLE declares, checked to be two positive ints within the pixel limit
    (:func:`maskdistill.images.max_pixels`) before anything is decoded; ValueError naming
    ``source`` otherwise."""
    size = rle.get("size") if isinstance(rle, dict) else None
    if (
        not isinstance(size, (list, tuple))
        or len(size) != 2
        or not all(isinstance(v, int) and v > 0 for v in size)
        or "counts" not in rle
    ):
        raise ValueError(f"{source}: not a COCO RLE (expected 'size': [H, W] and 'counts')")
    if size[0] * size[1] > max_pixels():
        raise ValueError(
            f"{source}: RLE of {size[1]} x {size[0]} pixels, more than the limit of "
            f"{max_pixels():,} (config key max_pixels)"
        )
    return int(size[0]), int(size[1])


def decode_rle(
    rle: dict[str, Any], shape: tuple[int, int] | None = None, source: str = "RLE"
) -> np.ndarray:
    """The bool (H, W) mask of a compressed RLE (``counts`` as str or bytes).

    The declared size is checked first (:func:`rle_shape`), and against ``shape`` (the image's
    (H, W)) when given: ValueError naming ``source``.
    """
    declared = rle_shape(rle, source)
    if shape is not None and declared != tuple(shape):
        raise ValueError(f"{source}: RLE of size {list(declared)}, the image is {list(shape)}")
    return mask_utils.decode(_pycocotools_rle(rle)).astype(bool)


def rle_area_and_box(rle: dict[str, Any]) -> tuple[int, list[int]]:
    """Pixel count and tight box [x, y, w, h] (ints) of a compressed RLE."""
    encoded = _pycocotools_rle(rle)
    return int(mask_utils.area(encoded)), [int(v) for v in mask_utils.toBbox(encoded)]


def mask_annotation(
    mask: np.ndarray,
    *,
    annotation_id: int,
    image_id: int,
    category_id: int,
    score: float = 1.0,
) -> dict[str, Any]:
    """One COCO instance annotation of a bool (H, W) mask; area and bbox come from its RLE.

    bbox is [x, y, w, h] in pixels (tight box of the mask), iscrowd 0.
    """
    rle = encode_rle(mask)
    area, box = rle_area_and_box(rle)
    return {
        "id": annotation_id,
        "image_id": image_id,
        "category_id": category_id,
        "segmentation": rle,
        "area": area,
        "bbox": box,
        "iscrowd": 0,
        "score": float(score),
    }


def paint_label_map(
    shape: tuple[int, int],
    masks: Iterable[tuple[np.ndarray, int]],
    overlap: str = "overwrite",
    painted: list[bool] | None = None,
) -> np.ndarray:
    """Paint (mask, label) pairs in the given order onto an all-zero (H, W) uint8 map.

    Args:
        shape: (H, W) of the map; every mask must have it.
        masks: bool (H, W) masks with labels >= 1, in painting order (e.g. descending score).
        overlap: what a mask does where pixels were painted before it:
            ``skip``: a mask touching any painted pixel is left out entirely (MaskDistill's
            selection, as the paper describes it);
            ``overwrite``: it paints over them;
            ``fill``: it paints only the unpainted pixels (the earlier mask wins pixel by pixel);
            ``reference``: the authors' gen_segmentation.py exactly: its test
            ``mask_res[mask].any()`` indexes the map with the 0/1 mask as row numbers, so every
            mask after the first is left out when row 0 of the map (or row 1, when the mask
            holds a 1) has a painted pixel, and otherwise paints over what it meets.
        painted: when given, receives for each mask whether it was painted (``skip`` leaves
            some out).

    Returns:
        (H, W) int32, 0 where no mask was painted (label PNGs hold labels up to 254).
    """
    if overlap not in OVERLAPS:
        raise ValueError(f"overlap: expected one of {OVERLAPS}, got {overlap!r}")
    labels = np.zeros(shape, dtype=np.int32)
    covered = np.zeros(shape, dtype=bool)
    painted_before = False  # the reference tests every mask but the first
    for mask, label in masks:
        if mask.shape != tuple(shape):
            raise ValueError(f"mask of shape {mask.shape} does not fit the label map {shape}")
        if label < 1:
            raise ValueError(f"label {label}: painted labels start at 1 (0 is background)")
        if overlap == "reference":
            rows = [row for row in (0, 1) if row < shape[0] and (mask == row).any()]
            skipped = painted_before and bool(covered[rows].any())
        else:
            skipped = overlap == "skip" and bool((covered & mask).any())
        painted_before = True
        if painted is not None:
            painted.append(not skipped)
        if skipped:
            continue
        target = mask & ~covered if overlap == "fill" else mask
        labels[target] = label
        covered |= mask
    return labels


def voc_palette() -> list[int]:
    """The PASCAL VOC colour map: 256 RGB triples (768 ints), index 255 is (224, 224, 192)."""
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette += [r, g, b]
    return palette


def write_label_png(path: str | os.PathLike, labels: np.ndarray) -> None:
    """Save an (H, W) label map (values 0..255) as a palette PNG with the VOC colours, atomically.

    The full 256-entry palette is written, so that every reader gets the indices back unchanged.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.size and (labels.min() < 0 or labels.max() > IGNORE):
        raise ValueError(f"{path}: a label map must be (H, W) with values 0..{IGNORE}")
    image = Image.fromarray(labels.astype(np.uint8))  # mode L; putpalette makes it P
    image.putpalette(voc_palette())
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def read_label_png(path: str | os.PathLike) -> np.ndarray:
    """Read a label PNG as its raw indices, without any colour conversion.

    Args:
        path: a palette (``P``) or grayscale (``L``) PNG, e.g. VOC SegmentationClass.

    Returns:
        (H, W) uint8 array of the stored indices (no EXIF orientation applied).

    Raises:
        BadImageError: the file cannot be read, or stores colours instead of indices.
    """
    with pillow_errors(path), Image.open(path) as image:
        if image.mode not in ("P", "L"):
            raise BadImageError(
                path,
                f"expected a palette (P) or grayscale (L) PNG of label indices, got mode "
                f"{image.mode}",
            )
        return np.array(image)


def label_png_path(folder: str | os.PathLike, file_name: str) -> Path:
    """Where a stage writes the label PNG of image ``file_name``: ``folder/<file_name stem>.png``.

    Sub-folders of ``file_name`` (folder datasets) are kept, so names never collide; a name that
    is not a plain relative path raises :class:`maskdistill.names.UnsafeNameError`.
    """
    return output_path(folder, file_name, ".png")


def find_label_png(folders: Iterable[str | os.PathLike], file_name: str) -> Path:
    """The label PNG of image ``file_name`` in the first of ``folders`` that holds it."""
    for folder in folders:
        path = label_png_path(folder, file_name)
        if path.is_file():
            return path
    raise ValueError(f"no label PNG of {file_name!r} in {[str(f) for f in folders]}")
