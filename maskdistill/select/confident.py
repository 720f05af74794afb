"""Stage 4 core (pure): an image's confident Mask R-CNN predictions painted into one label map.

docs/method.md, stage 4: predictions in descending score; every one scoring at least ``tau`` is
kept, and when none does, only the best one (so every image with a prediction gets a label);
they are painted on an all-zero map (0 background, no ignore label) with their category id
(1 + cluster index), a mask that touches pixels painted before it being skipped entirely
(``overlap="skip"``, the paper's text), or as the authors' code does (``"overwrite"``: its
overlap test indexes the map with the 0/1 mask as row numbers, so after a kept mask that touches
the top two rows every later mask is skipped, disjoint or not; otherwise later masks paint over
earlier ones; :func:`maskdistill.masks.paint_label_map`, mode ``reference``). An image without
any prediction gets no label map (the reference writes none: it leaves stage 5's training set).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from maskdistill.masks import paint_label_map


@dataclass(frozen=True)
class Selection:
    """One image's selected label map and what went into it."""

    labels: np.ndarray  # (H, W) int32: 0 background, category ids elsewhere
    kept: int  # predictions kept by the score rule
    painted: int  # of those, the ones painted (skip leaves out overlapping ones)
    fell_back: bool  # no prediction reached tau: only the best one was kept

    @property
    def coverage(self) -> float:
        """Share of the image's pixels that got a label."""
        return float((self.labels > 0).mean()) if self.labels.size else 0.0


def confident(
    predictions: Sequence[Mapping[str, Any]], tau: float
) -> tuple[list[Mapping[str, Any]], bool]:
    """The predictions scoring at least ``tau``, in descending score, or the best one alone.

    Returns the kept predictions and whether the best one was kept alone for want of any
    reaching ``tau`` (an image without predictions keeps none and does not fall back).
    """
    ranked = sorted(predictions, key=lambda p: -p["score"])
    kept = [p for p in ranked if p["score"] >= tau]
    if kept or not ranked:
        return kept, False
    return ranked[:1], True


def select_label_map(
    predictions: Sequence[Mapping[str, Any]],
    shape: tuple[int, int],
    tau: float,
    overlap: str,
    decode: Callable[[Mapping[str, Any]], np.ndarray],
) -> Selection:
    """The label map of one image's predictions (module doc).

    Args:
        predictions: COCO results entries of the image (``score``, ``category_id``, mask).
        shape: (H, W) of the image.
        tau: the confidence threshold (reference 0.9).
        overlap: ``skip`` or ``overwrite``.
        decode: a prediction -> its bool (H, W) mask.
    """
    if overlap not in ("skip", "overwrite"):
        raise ValueError(f"overlap: expected skip or overwrite, got {overlap!r}")
    kept, fell_back = confident(predictions, tau)
    painted: list[bool] = []
    masks = [(decode(p), int(p["category_id"])) for p in kept]
    mode = "reference" if overlap == "overwrite" else overlap
    labels = paint_label_map(shape, masks, mode, painted)
    return Selection(labels, len(kept), sum(painted), fell_back)
