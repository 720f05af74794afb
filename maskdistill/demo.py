"""Rendering of the demo dataset's scenes: pure numpy, no file I/O.

A scene is 1 to 3 textured objects of six categories (disc, square, triangle, star, ring, cross)
on a cluttered background. Each category has its own shape, colour family and texture, so a class
is recoverable from appearance and shape despite colour jitter. Objects are placed uniformly over
the image (they may be cut by the border), later objects occlude earlier ones, and each object
covers about 6 to 22 % of the image, so a fixed centre box rarely localises one.

``render_scene`` draws one picture (the dataset generator uses it); ``render_scene_pair`` draws the
same objects on two independent backgrounds, and ``paired_demo_views`` makes those pairs a view
source for self-supervised pretraining.
Both share one code path: ``_layout`` places the objects, ``_background`` draws a background.
All randomness comes from the ``numpy.random.Generator`` passed in, so a seed fixes everything.
"""

from __future__ import annotations

import colorsys
import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

CLASS_NAMES: tuple[str, ...] = ("disc", "square", "triangle", "star", "ring", "cross")
"""Category names; category ``k`` (1-based) is ``CLASS_NAMES[k - 1]``; 0 is background."""

SIDE_RANGE = (96, 192)
"""Inclusive range of the image height and width (pixels) when no size is given."""

MAX_OBJECTS = 3
AREA_RANGE = (0.06, 0.22)  # object area / image area, drawn log-uniformly (small and medium)
MIN_VISIBLE = 0.5  # an object keeps at least this fraction of its in-image area visible
MIN_INSIDE = 0.7  # at least this fraction of an object's nominal area lies inside the image
PLACEMENT_TRIES = 12  # attempts per wanted object before the scene keeps fewer objects

# Category -> (hue in [0, 1), texture). Hues are far apart; jitter stays well inside the gaps.
_APPEARANCE: tuple[tuple[float, str], ...] = (
    (0.00, "shaded"),  # disc: red
    (0.62, "stripes"),  # square: blue
    (0.33, "dots"),  # triangle: green
    (0.13, "solid"),  # star: yellow-orange
    (0.83, "gradient"),  # ring: magenta
    (0.50, "checker"),  # cross: cyan
)
_HUE_JITTER = 0.025


@dataclass(frozen=True)
class Scene:
    """One rendered scene with its ground truth.

    Attributes:
        image: (H, W, 3) uint8 RGB.
        masks: (N, H, W) bool, the visible part of each object, in drawing order (N in 1..3).
        labels: (N,) int64 category of each object, 1..len(CLASS_NAMES).
    """

    image: np.ndarray
    masks: np.ndarray
    labels: np.ndarray


# ---------------------------------------------------------------- shapes (unit coordinates)
# Each shape maps local coordinates (u, v), roughly within [-1, 1]^2, to a bool mask.


def _disc(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u * u + v * v <= 1.0


def _square(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.maximum(np.abs(u), np.abs(v)) <= 0.8


def _triangle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # Equilateral, inscribed in the unit circle: three half-planes at inradius 0.5.
    inside = np.ones(u.shape, dtype=bool)
    for angle in (-np.pi / 2, np.pi / 6, 5 * np.pi / 6):
        inside &= u * np.cos(angle) + v * np.sin(angle) <= 0.5
    return inside


def _star(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # Five points: the radius goes linearly from 0.45 (between points) to 1 (tips) with the angle.
    phase = (np.arctan2(v, u) * (5 / (2 * np.pi))) % 1.0
    radius = 0.45 + 0.55 * np.abs(2 * phase - 1)
    return u * u + v * v <= radius * radius


def _ring(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    rr = u * u + v * v
    return (rr <= 1.0) & (rr >= 0.55**2)


def _cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    au, av = np.abs(u), np.abs(v)
    return ((au <= 0.33) & (av <= 1.0)) | ((au <= 1.0) & (av <= 0.33))


_SHAPES: tuple[Callable[[np.ndarray, np.ndarray], np.ndarray], ...] = (
    _disc,
    _square,
    _triangle,
    _star,
    _ring,
    _cross,
)


@functools.cache
def _unit_area(category: int) -> float:
    """Area of a category's shape in unit coordinates (numerically, on a 512 x 512 grid)."""
    axis = (np.arange(512) + 0.5) / 256 - 1.0
    u, v = np.meshgrid(axis, axis)
    return float(_SHAPES[category - 1](u, v).mean() * 4.0)


# ---------------------------------------------------------------- textures (unit coordinates)
# Each texture maps local coordinates to a mixing weight t in [0, 1] between two shades.


def _texture(name: str, u: np.ndarray, v: np.ndarray, phase: float) -> np.ndarray:
    if name == "shaded":
        return np.clip(0.7 * (u * u + v * v), 0.0, 1.0)
    if name == "stripes":
        return (np.sin(2 * np.pi * (2.5 * u + phase)) > 0).astype(np.float32)
    if name == "dots":
        fu, fv = (3 * u + phase) % 1.0 - 0.5, (3 * v + phase) % 1.0 - 0.5
        return (fu * fu + fv * fv < 0.09).astype(np.float32)
    if name == "gradient":
        return np.clip((v + 1.0) / 2.0, 0.0, 1.0)
    if name == "checker":
        return ((np.floor(3 * u + phase) + np.floor(3 * v + phase)) % 2).astype(np.float32)
    return np.zeros(u.shape, dtype=np.float32)  # "solid"


# ---------------------------------------------------------------- colours


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    """(3,) float32 RGB in [0, 255] of an HSV colour with components in [0, 1]."""
    return np.asarray(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32) * 255.0


def _background_colour(rng: np.random.Generator) -> np.ndarray:
    """A muted random colour: (3,) float32 in [0, 255]."""
    return _hsv(rng.random(), rng.uniform(0.0, 0.55), rng.uniform(0.2, 0.95))


# ---------------------------------------------------------------- objects


@dataclass(frozen=True)
class _Object:
    """One placed object: its category, its mask and colours inside its bounding crop."""

    category: int
    rows: slice
    cols: slice
    mask: np.ndarray  # (h, w) bool inside the crop
    colour: np.ndarray  # (h, w, 3) float32 RGB inside the crop


def _sample_object(rng: np.random.Generator, height: int, width: int) -> _Object | None:
    """Draw one object uniformly placed in the image; None when too little of it lies inside."""
    category = int(rng.integers(1, len(CLASS_NAMES) + 1))
    low, high = np.log(AREA_RANGE[0]), np.log(AREA_RANGE[1])
    area = float(np.exp(rng.uniform(low, high))) * height * width
    scale = np.sqrt(area / _unit_area(category))
    stretch = float(rng.uniform(0.8, 1.25))
    sx, sy = scale * np.sqrt(stretch), scale / np.sqrt(stretch)
    angle = float(rng.uniform(0.0, 2 * np.pi))
    cx, cy = rng.uniform(0.0, width), rng.uniform(0.0, height)
    hue, texture = _APPEARANCE[category - 1]
    light = _hsv(hue + rng.normal(0.0, _HUE_JITTER), rng.uniform(0.65, 1.0), rng.uniform(0.7, 1.0))
    dark = light * rng.uniform(0.35, 0.6)
    phase = float(rng.random())

    # Pixel centres in the object's bounding crop, then the object's local coordinates.
    reach = max(sx, sy)
    y0, y1 = max(0, int(cy - reach)), min(height, int(np.ceil(cy + reach)) + 1)
    x0, x1 = max(0, int(cx - reach)), min(width, int(np.ceil(cx + reach)) + 1)
    if y1 <= y0 or x1 <= x0:
        return None
    dy = (np.arange(y0, y1, dtype=np.float32) + 0.5 - cy)[:, None]
    dx = (np.arange(x0, x1, dtype=np.float32) + 0.5 - cx)[None, :]
    cos, sin = np.cos(angle), np.sin(angle)
    u = (cos * dx + sin * dy) / sx
    v = (-sin * dx + cos * dy) / sy
    mask = _SHAPES[category - 1](u, v)
    if mask.sum() < MIN_INSIDE * area:
        return None
    t = _texture(texture, u, v, phase)[..., None]
    colour = light * (1.0 - t) + dark * t
    return _Object(category, slice(y0, y1), slice(x0, x1), mask, colour.astype(np.float32))


def _layout(rng: np.random.Generator, height: int, width: int) -> list[_Object]:
    """Place 1 to 3 objects, later ones on top, each keeping >= MIN_VISIBLE of itself visible.

    Up to PLACEMENT_TRIES draws per wanted object; fewer objects are kept when they run out, but
    drawing goes on until at least one object is placed.
    """
    wanted = int(rng.integers(1, MAX_OBJECTS + 1))
    objects: list[_Object] = []
    instance = np.zeros((height, width), dtype=np.int32)
    tries = 0
    while len(objects) < wanted and (tries < wanted * PLACEMENT_TRIES or not objects):
        tries += 1
        obj = _sample_object(rng, height, width)
        if obj is None:
            continue
        trial = instance.copy()
        trial[obj.rows, obj.cols][obj.mask] = len(objects) + 1
        visible = np.bincount(trial.ravel(), minlength=len(objects) + 2)[1 : len(objects) + 1]
        if all(visible[i] >= MIN_VISIBLE * o.mask.sum() for i, o in enumerate(objects)):
            objects.append(obj)
            instance = trial
    return objects


# ---------------------------------------------------------------- backgrounds


def _upsample(grid: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear upsampling of a (gh, gw) grid to (height, width), float32."""
    gh, gw = grid.shape
    ys = np.linspace(0.0, gh - 1.0, height, dtype=np.float32)
    xs = np.linspace(0.0, gw - 1.0, width, dtype=np.float32)
    y0 = np.minimum(ys.astype(np.int64), gh - 2)
    x0 = np.minimum(xs.astype(np.int64), gw - 2)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    return (top * (1 - fy) + bottom * fy).astype(np.float32)


def _pattern(rng: np.random.Generator, kind: str, height: int, width: int) -> np.ndarray:
    """(H, W) float32 mixing weight in [0, 1] of a background pattern."""
    ys = np.arange(height, dtype=np.float32)[:, None]
    xs = np.arange(width, dtype=np.float32)[None, :]
    angle = rng.uniform(0.0, np.pi)
    along = np.cos(angle) * xs + np.sin(angle) * ys
    across = -np.sin(angle) * xs + np.cos(angle) * ys
    if kind == "gradient":
        span = abs(np.cos(angle)) * width + abs(np.sin(angle)) * height
        return np.clip((along - along.min()) / span, 0.0, 1.0)
    if kind == "stripes":
        wave = np.sin(2 * np.pi * along / rng.uniform(5.0, 24.0) + rng.uniform(0, 2 * np.pi))
        return (wave > 0).astype(np.float32) if rng.random() < 0.5 else (wave + 1) / 2
    if kind == "checker":
        cell = rng.uniform(5.0, 24.0)
        return ((np.floor(along / cell) + np.floor(across / cell)) % 2).astype(np.float32)
    if kind == "noise":
        cells = rng.integers(3, 14, size=2)
        return _upsample(rng.random((int(cells[0]), int(cells[1]))), height, width)
    return np.zeros((height, width), dtype=np.float32)  # "plain"


_BACKGROUNDS = ("plain", "gradient", "stripes", "checker", "noise")


def _strokes(rng: np.random.Generator, image: np.ndarray) -> None:
    """Draw 2 to 8 thin distractor line segments (1 to 3 px wide) into ``image`` in place."""
    height, width = image.shape[:2]
    for _ in range(int(rng.integers(2, 9))):
        ax, bx = (float(v) for v in rng.uniform(0, width, 2))
        ay, by = (float(v) for v in rng.uniform(0, height, 2))
        half = float(rng.uniform(0.5, 1.5))
        colour = _hsv(rng.random(), rng.uniform(0.0, 1.0), rng.uniform(0.1, 1.0))
        # Distance of each pixel centre in the segment's bounding crop to the segment.
        x0, x1 = max(0, int(min(ax, bx) - half)), min(width, int(max(ax, bx) + half) + 1)
        y0, y1 = max(0, int(min(ay, by) - half)), min(height, int(max(ay, by) + half) + 1)
        xs = np.arange(x0, x1, dtype=np.float32)[None, :] + np.float32(0.5 - ax)
        ys = np.arange(y0, y1, dtype=np.float32)[:, None] + np.float32(0.5 - ay)
        ex, ey = bx - ax, by - ay
        t = np.clip((xs * ex + ys * ey) / max(ex * ex + ey * ey, 1e-6), 0.0, 1.0)
        dist2 = (xs - t * ex) ** 2 + (ys - t * ey) ** 2
        image[y0:y1, x0:x1][dist2 <= half * half] = colour


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """(H, W, 3) float32 RGB in [0, 255]: a pattern between two colours, maybe with strokes."""
    kind = _BACKGROUNDS[int(rng.integers(len(_BACKGROUNDS)))]
    t = _pattern(rng, kind, height, width)[..., None]
    first = _background_colour(rng)
    image = first + (_background_colour(rng) - first) * t
    if rng.random() < 0.6:
        _strokes(rng, image)
    return image


# ---------------------------------------------------------------- scenes


def _composite(rng: np.random.Generator, image: np.ndarray, objects: list[_Object]) -> np.ndarray:
    """Paint the objects over the background ``image`` (changed in place) in order, add pixel
    noise: (H, W, 3) uint8."""
    for obj in objects:
        crop = image[obj.rows, obj.cols]
        crop[obj.mask] = obj.colour[obj.mask]
    # Uniform pixel noise of standard deviation 0..10 (much cheaper to draw than Gaussian).
    amplitude = np.float32(rng.uniform(0.0, 10.0) * np.sqrt(12.0))
    image += amplitude * (rng.random(image.shape, dtype=np.float32) - np.float32(0.5))
    np.clip(image, 0.0, 254.5, out=image)
    return (image + np.float32(0.5)).astype(np.uint8)  # round to nearest


def _ground_truth(objects: list[_Object], height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Visible masks (N, H, W) bool and labels (N,) int64 of objects drawn in order."""
    instance = np.zeros((height, width), dtype=np.int32)
    for index, obj in enumerate(objects, start=1):
        instance[obj.rows, obj.cols][obj.mask] = index
    masks = instance[None] == np.arange(1, len(objects) + 1)[:, None, None]
    labels = np.array([obj.category for obj in objects], dtype=np.int64)
    return masks, labels


def _size(rng: np.random.Generator, size: tuple[int, int] | None) -> tuple[int, int]:
    if size is None:
        height, width = rng.integers(SIDE_RANGE[0], SIDE_RANGE[1] + 1, size=2)
        return int(height), int(width)
    height, width = size
    if height < 16 or width < 16:
        raise ValueError(f"scene size must be at least 16 x 16 pixels, got {height} x {width}")
    return int(height), int(width)


def render_scene(rng: np.random.Generator, size: tuple[int, int] | None = None) -> Scene:
    """Render one scene: 1 to 3 objects over a cluttered background.

    Args:
        rng: the only source of randomness (same generator state -> same scene).
        size: (H, W) in pixels; None draws both uniformly from ``SIDE_RANGE``.

    Returns:
        A ``Scene``: image (H, W, 3) uint8, masks (N, H, W) bool (visible parts, disjoint, each
        non-empty), labels (N,) int64 in 1..6.
    """
    height, width = _size(rng, size)
    objects = _layout(rng, height, width)
    image = _composite(rng, _background(rng, height, width), objects)
    masks, labels = _ground_truth(objects, height, width)
    return Scene(image=image, masks=masks, labels=labels)


def render_scene_pair(
    rng: np.random.Generator, size: tuple[int, int] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Render the same objects (positions, shapes, colours, occlusion) on two backgrounds.

    The two backgrounds (pattern, colours, strokes) and pixel noise are drawn independently, so
    only the objects are shared between the two images: a view pair for self-supervised
    pretraining.

    Args:
        rng: the only source of randomness.
        size: (H, W) in pixels; None draws both uniformly from ``SIDE_RANGE``.

    Returns:
        (image_a, image_b, masks, labels): two (H, W, 3) uint8 RGB images, masks (N, H, W) bool
        (visible parts, shared by both images), labels (N,) int64 in 1..6.
    """
    height, width = _size(rng, size)
    objects = _layout(rng, height, width)
    image_a = _composite(rng, _background(rng, height, width), objects)
    image_b = _composite(rng, _background(rng, height, width), objects)
    masks, labels = _ground_truth(objects, height, width)
    return image_a, image_b, masks, labels


def paired_demo_views(rng: np.random.Generator, batch: int) -> tuple[list, list]:
    """A pretraining view source: ``batch`` new scenes, each rendered on two backgrounds.

    See :mod:`maskdistill.pretrain.views` for what a view source is.
    """
    pairs = [render_scene_pair(rng) for _ in range(batch)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def scene_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of image ``index`` of ``split`` in the dataset made with ``seed``.

    Each image has its own stream, so an image does not depend on how many others are made.
    """
    split_code = int.from_bytes(split.encode(), "little")
    return np.random.default_rng(np.random.SeedSequence([seed, split_code, index]))


def boundary_band(instance: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels whose 3 x 3 neighbourhood holds another instance id (or background).

    Used as the 255 ("ignore") band around objects in the semantic map, as PASCAL VOC does.
    """
    padded = np.pad(instance, 1, mode="edge")
    height, width = instance.shape
    band = np.zeros(instance.shape, dtype=bool)
    for dy in range(3):
        for dx in range(3):
            band |= padded[dy : dy + height, dx : dx + width] != instance
    return band
