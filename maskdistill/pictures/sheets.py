"""Contact sheets of what each stage found for a fixed sample of images (pure, no file I/O).

The sample is the same for every stage and every run with the same images, count and seed: the
images whose ``crc32("<seed>/<file name>")`` are smallest, shown in file-name order. A sheet has
one row per sampled image and the columns of its stage (:data:`COLUMNS`), each drawn from the
image's :class:`ImageData` by :mod:`.drawing`; a column whose data an image lacks
(e.g. no ground truth) is left out of the sheet.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from maskdistill.pictures import drawing


@dataclass
class ImageData:
    """What the stages found for one image (None: the stage did not run or found nothing)."""

    file_name: str
    image: np.ndarray  # (H, W, 3) uint8
    ground_truth: np.ndarray | None = None  # (H, W) class labels, 255 ignored
    discovery: dict[str, Any] | None = None  # a shard record with its full-resolution "mask"
    pseudo: tuple[np.ndarray, int] | None = None  # (mask, category id) of the pseudo GT
    predictions: list[tuple[np.ndarray, int, float]] = field(default_factory=list)
    selected: np.ndarray | None = None  # stage 4's label map
    segmented: np.ndarray | None = None  # stage 5's labels
    refined: np.ndarray | None = None  # stage 5's labels after the CRF


def sample(file_names: Sequence[str], count: int, seed: int) -> list[str]:
    """``count`` file names chosen by a seeded hash (stable when images are added), sorted."""
    ranked = sorted(file_names, key=lambda name: zlib.crc32(f"{seed}/{name}".encode()))
    return sorted(ranked[:count])


def _image(d: ImageData) -> np.ndarray:
    return d.image


def _attention(d: ImageData) -> np.ndarray | None:
    r = d.discovery
    if r is None:
        return None
    return drawing.attention_panel(
        d.image, r["attention"].astype(float), r["patch_size"], r["resized_size"], r["source"]
    )


def _mask(d: ImageData) -> np.ndarray | None:
    if d.discovery is None:
        return None
    out = drawing.overlay(d.image, d.discovery["mask"], drawing.MASK_COLOUR)
    return drawing.draw_box(out, d.discovery["box"])


def _pseudo(d: ImageData) -> np.ndarray | None:
    if d.pseudo is None:
        return None if d.discovery is None else d.image  # an empty mask: no annotation
    mask, category = d.pseudo
    return drawing.overlay(d.image, mask, drawing.label_colour(category))


def _predictions(d: ImageData) -> np.ndarray:
    return drawing.predictions_panel(d.image, d.predictions)


def _labels(attribute: str) -> Callable[[ImageData], np.ndarray | None]:
    def draw(d: ImageData) -> np.ndarray | None:
        labels = getattr(d, attribute)
        return None if labels is None else drawing.label_overlay(d.image, labels)

    return draw


COLUMNS: dict[str, list[tuple[str, Callable[[ImageData], np.ndarray | None]]]] = {
    "discover": [("CLS attention", _attention), ("mask and box", _mask)],
    "cluster": [("pseudo class", _pseudo)],
    "distill": [("Mask R-CNN (scores)", _predictions)],
    "select": [("selected labels", _labels("selected"))],
    "segment": [("stage 5", _labels("segmented")), ("stage 5 + CRF", _labels("refined"))],
    "overview": [
        ("1 mask", _mask),
        ("2 pseudo class", _pseudo),
        ("3 Mask R-CNN", _predictions),
        ("4 selected", _labels("selected")),
        ("5 segmentation", _labels("segmented")),
    ],
}
STAGES = tuple(COLUMNS)


def stage_sheet(
    stage: str,
    images: Sequence[ImageData],
    legend: Sequence[tuple[int, str]] = (),
    height: int = 128,
) -> np.ndarray:
    """The contact sheet of ``stage``: image, the stage's columns, ground truth."""
    if stage not in COLUMNS:
        raise ValueError(f"stage {stage!r}: expected one of {STAGES}")
    columns = [("image", _image), *COLUMNS[stage], ("ground truth", _labels("ground_truth"))]
    cells = [[draw(d) for _, draw in columns] for d in images]
    kept = [c for c in range(len(columns)) if any(row[c] is not None for row in cells)]
    # an image that lacks a kept column's data shows itself there
    rows = [
        [row[c] if row[c] is not None else d.image for c in kept]
        for row, d in zip(cells, images, strict=True)
    ]
    return drawing.contact_sheet(rows, [columns[c][0] for c in kept], legend, height)
