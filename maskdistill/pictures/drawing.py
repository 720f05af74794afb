"""Pictures of what each stage found (pure: arrays in, RGB arrays out; no file I/O).

Panels are (H, W, 3) uint8 RGB arrays: an image with a mask, a label map, an attention map or
predictions drawn over it. A contact sheet stacks them: one row per image, one column per panel,
scaled to a common height, with column titles and a legend of the label colours. Labels take the
PASCAL VOC palette's colours (as the label PNGs do), so a cluster has the same colour in every
picture and file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from maskdistill.masks import voc_palette

ALPHA = 0.5  # opacity of an overlay
MASK_COLOUR = (255, 40, 40)
BOX_COLOUR = (255, 255, 0)
TEXT_COLOUR = (255, 255, 255)
BACKGROUND = (32, 32, 32)
TITLE_HEIGHT = 16  # pixels above the columns for their titles
LEGEND_ROW = 16  # pixels per legend line
_PALETTE = np.array(voc_palette(), dtype=np.uint8).reshape(256, 3)


def label_colour(label: int) -> tuple[int, int, int]:
    """The colour of label ``label`` (the VOC palette's; 255, ignored, is (224, 224, 192))."""
    return tuple(int(v) for v in _PALETTE[label % 256])


def overlay(
    image: np.ndarray, mask: np.ndarray, colour: Sequence[int], alpha: float = ALPHA
) -> np.ndarray:
    """``image`` with the pixels of bool ``mask`` blended towards ``colour``; the rest unchanged.

    Args:
        image: (H, W, 3) uint8.
        mask: (H, W) bool.
        colour: RGB 0..255.
        alpha: 0 keeps the image, 1 paints the colour.

    Returns:
        (H, W, 3) uint8: ``round((1 - alpha) * image + alpha * colour)`` inside the mask.
    """
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask {mask.shape} does not fit the image {image.shape[:2]}")
    out = image.copy()
    blend = (1 - alpha) * image[mask].astype(np.float64) + alpha * np.asarray(colour)
    out[mask] = np.rint(blend).astype(np.uint8)
    return out


def label_overlay(image: np.ndarray, labels: np.ndarray, alpha: float = ALPHA) -> np.ndarray:
    """``image`` with every non-zero label blended towards its colour (0 is left as it is;
    ground truth's ignored 255 takes the palette's (224, 224, 192))."""
    out = image
    for label in np.unique(labels):
        if label != 0:
            out = overlay(out, labels == label, label_colour(int(label)), alpha)
    return out


def draw_box(image: np.ndarray, box: Sequence[float], colour=BOX_COLOUR, width: int = 2):
    """``image`` with the outline of box (x, y, w, h) drawn (exclusive ends), as a new array."""
    x, y, w, h = (float(v) for v in box)
    picture = Image.fromarray(image)
    if w > 0 and h > 0:
        ImageDraw.Draw(picture).rectangle([x, y, x + w - 1, y + h - 1], outline=colour, width=width)
    return np.array(picture)


def write_text(image: np.ndarray, xy: tuple[float, float], text: str, colour=TEXT_COLOUR):
    """``image`` with ``text`` written at ``xy`` on a dark box (legible on any background)."""
    picture = Image.fromarray(image)
    draw = ImageDraw.Draw(picture)
    left, top, right, bottom = draw.textbbox(xy, text)
    draw.rectangle([left - 1, top - 1, right + 1, bottom + 1], fill=BACKGROUND)
    draw.text(xy, text, fill=colour)
    return np.array(picture)


def heat_colours(values: np.ndarray) -> np.ndarray:
    """(h, w) values -> (h, w, 3) uint8, min..max from dark blue through red to yellow."""
    low, high = float(values.min()), float(values.max())
    t = (values - low) / (high - low) if high > low else np.zeros_like(values, dtype=float)
    red = np.clip(3 * t, 0, 1)
    green = np.clip(3 * t - 1, 0, 1)
    blue = np.clip(1 - 3 * np.abs(t - 0.25), 0, 1) * 0.8
    return np.rint(255 * np.stack([red, green, blue], axis=-1)).astype(np.uint8)


def attention_panel(
    image: np.ndarray,
    attention: np.ndarray,
    patch: int,
    resized_size: tuple[int, int],
    source: int,
) -> np.ndarray:
    """The CLS attention over the image, its source patch outlined.

    Args:
        image: (H, W, 3) uint8, the original image.
        attention: (h, w) the CLS affinity on the patch grid.
        patch: P in pixels of the resized input.
        resized_size: (H', W') the backbone's input before padding.
        source: the source patch (row-major index into the grid).
    """
    height, width = image.shape[:2]
    grid = np.repeat(np.repeat(heat_colours(attention.astype(float)), patch, 0), patch, 1)
    grid = grid[: resized_size[0], : resized_size[1]]
    heat = np.asarray(Image.fromarray(grid).resize((width, height), Image.Resampling.NEAREST))
    blended = np.rint(0.4 * image + 0.6 * heat).astype(np.uint8)
    if source < 0:
        return blended
    cols = attention.shape[1]
    scale_y, scale_x = height / resized_size[0], width / resized_size[1]
    row, col = divmod(source, cols)
    box = (col * patch * scale_x, row * patch * scale_y, patch * scale_x, patch * scale_y)
    return draw_box(blended, box, colour=(0, 255, 255), width=2)


def predictions_panel(
    image: np.ndarray, predictions: Sequence[tuple[np.ndarray, int, float]], limit: int = 5
) -> np.ndarray:
    """The best ``limit`` scored masks (mask, label, score), each in its label's colour, with
    its score written at its top-left corner; the best one is drawn last (on top)."""
    ranked = sorted(predictions, key=lambda p: -p[2])[:limit]
    out = image
    for mask, label, _ in reversed(ranked):
        out = overlay(out, mask, label_colour(label))
    for mask, _, score in ranked:
        rows, cols = np.nonzero(mask)
        if rows.size:
            out = write_text(out, (int(cols.min()), int(rows.min())), f"{score:.2f}")
    return out


def scaled(panel: np.ndarray, height: int) -> np.ndarray:
    """``panel`` resized (bilinear) to ``height`` pixels, its aspect ratio kept."""
    if panel.shape[0] == height:
        return panel
    width = max(1, round(panel.shape[1] * height / panel.shape[0]))
    return np.asarray(Image.fromarray(panel).resize((width, height), Image.Resampling.BILINEAR))


def contact_sheet(
    rows: Sequence[Sequence[np.ndarray]],
    titles: Sequence[str],
    legend: Sequence[tuple[int, str]] = (),
    height: int = 128,
    gap: int = 4,
) -> np.ndarray:
    """One row per image, one column per panel, column titles on top, a legend below.

    Args:
        rows: per row, its panels (H, W, 3) uint8 in column order; every row has
            ``len(titles)`` panels.
        titles: the columns' names.
        legend: (label, name) of the label colours the panels use.
        height: pixels of every panel (widths follow the aspect ratios).
        gap: pixels between panels.

    Returns:
        (H, W, 3) uint8. Each column is as wide as its widest panel; a narrower panel sits at
        the column's left, on the background colour.
    """
    if any(len(row) != len(titles) for row in rows):
        raise ValueError(f"every row needs {len(titles)} panels, one per title")
    panels = [[scaled(p, height) for p in row] for row in rows]
    widths = [max(row[c].shape[1] for row in panels) for c in range(len(titles))] or [0]
    legend_height = LEGEND_ROW * len(legend) + (gap if legend else 0)
    total_w = sum(widths) + gap * (len(widths) + 1)
    total_h = TITLE_HEIGHT + len(panels) * (height + gap) + gap + legend_height
    sheet = np.empty((total_h, total_w, 3), np.uint8)
    sheet[:] = BACKGROUND
    lefts = np.cumsum([gap] + [w + gap for w in widths[:-1]])
    for c, title in enumerate(titles):
        sheet = write_text(sheet, (int(lefts[c]), 2), title)
    for r, row in enumerate(panels):
        top = TITLE_HEIGHT + gap + r * (height + gap)
        for c, panel in enumerate(row):
            sheet[top : top + height, lefts[c] : lefts[c] + panel.shape[1]] = panel
    top = TITLE_HEIGHT + gap + len(panels) * (height + gap)
    for i, (label, name) in enumerate(legend):
        y = top + i * LEGEND_ROW
        sheet[y + 2 : y + LEGEND_ROW - 2, gap : gap + 12] = label_colour(label)
        sheet = write_text(sheet, (gap + 18, y + 2), name)
    return sheet


def cluster_legend(
    num_clusters: int,
    matching: Mapping[str, Any] | None = None,
    class_names: Sequence[str] = (),
) -> list[tuple[int, str]]:
    """Legend entries of the label colours: label k + 1 is ``cluster_<k>``, with the
    ground-truth class it was matched to (``matching``: label -> class name, as the metrics JSONs
    give it), and the ground truth's class of the same label (``class_names``, background
    excluded), which shares its colour."""
    entries = []
    for label in range(1, max(num_clusters, len(class_names)) + 1):
        parts = []
        if label <= num_clusters:
            name = f"cluster_{label - 1:02d}"
            if matching and str(label) in matching:
                name += f" = {matching[str(label)]}"
            parts.append(name)
        if label <= len(class_names):
            parts.append(f"[ground truth: {class_names[label - 1]}]")
        entries.append((label, " ".join(parts)))
    return entries
