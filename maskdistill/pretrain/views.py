"""View sources: where the images of each pretraining step come from.

A view source is ``views(rng, batch) -> (first, second)``: two lists of ``batch`` images
(H, W, 3) uint8 of the same scenes; the first global crop of scene i comes from ``first[i]``,
the second from ``second[i]``. Plain DINO passes the same image twice (:func:`image_views`); the
demo passes two renderings of one scene (``maskdistill.demo.paired_demo_views``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

# A view source: (numpy generator, batch size) -> (first renderings, second renderings).
ViewSource = Callable[[np.random.Generator, int], tuple[list[np.ndarray], list[np.ndarray]]]


def resize_shorter_side(image: np.ndarray, side: int) -> np.ndarray:
    """(H, W, 3) uint8 -> resized (bilinear, antialiased) so that min(H, W) == side."""
    height, width = image.shape[:2]
    scale = side / min(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))


def image_views(images: Sequence[np.ndarray]) -> ViewSource:
    """Plain DINO: each scene is one of ``images`` (drawn with replacement), used for both views."""
    if not images:
        raise ValueError("pretraining needs at least one image")

    def views(rng: np.random.Generator, batch: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        chosen = [images[i] for i in rng.integers(len(images), size=batch)]
        return chosen, chosen

    return views
