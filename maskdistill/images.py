"""Robust image loading: every readable image becomes RGB uint8, every unreadable one a clear error.

Conversions applied by :func:`load_image` (after the EXIF orientation):

- grayscale ``L`` and 1-bit ``1``: the gray value is copied to R, G and B (1-bit gives 0 or 255);
- palette ``P``: the palette colours;
- anything with transparency (``RGBA``, ``LA``, ``PA``, ``P``/``L``/``RGB`` with a ``tRNS``
  colour key): composited on black, ``rgb * alpha / 255`` rounded, so that fully transparent
  pixels are black whatever colour they hide;
- ``CMYK`` (and ``YCbCr``, ``LAB``, ``HSV``, ``RGBX``): Pillow's conversion to RGB;
- 16-bit grayscale ``I;16*`` and 32-bit ``I``: ``round(v * 255 / 65535)``; an ``I`` image with
  values outside 0..65535 and a float ``F`` image with values outside 0..1 are stretched
  linearly from their minimum to their maximum instead (``F`` in 0..1 is scaled by 255).

An image of more than :func:`max_pixels` pixels (config key ``max_pixels``, environment variable
``MASKDISTILL_MAX_PIXELS``; default 40 million) is a bad image, found from its header before any
pixel is decoded: it bounds every stage's memory per image. Pillow's decompression-bomb guard
(``Image.MAX_IMAGE_PIXELS``) is left as Pillow sets it, and truncated files are rejected
(``ImageFile.LOAD_TRUNCATED_IMAGES`` is never set): every pixel is decoded before an image is
accepted.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from maskdistill.io import atomic_path

log = logging.getLogger(__name__)

ON_BAD_IMAGE = ("error", "skip")
MAX_PIXELS_VARIABLE = "MASKDISTILL_MAX_PIXELS"
DEFAULT_MAX_PIXELS = 40_000_000  # the stages' peak memory per image stays well under 24 GB
# EXIF orientations that turn the image by 90 degrees (stored width is the displayed height)
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)
_SKIPPED_HEADER = ("file", "reason")


class BadImageError(ValueError):
    """An image file that cannot be read; ``path`` names it and ``reason`` says why."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        super().__init__(f"{path}: cannot read image: {reason}")
        self.path = Path(path)
        self.reason = reason

    def __reduce__(self):
        return type(self), (self.path, self.reason)


def _reason(path: Path, error: BaseException) -> str:
    """A one-line human reason for a failure of Pillow (or of the file system) on ``path``."""
    if isinstance(error, FileNotFoundError):
        return "no such file"
    if isinstance(error, IsADirectoryError):
        return "is a directory, not a file"
    if isinstance(error, PermissionError):
        return "permission denied"
    with contextlib.suppress(OSError):
        if path.stat().st_size == 0:
            return "empty file (0 bytes)"
    if isinstance(error, Image.DecompressionBombError):
        return f"refused as a possible decompression bomb (Pillow's pixel limit): {error}"
    if isinstance(error, UnidentifiedImageError):
        return "not an image file (Pillow cannot identify its format)"
    if isinstance(error, OSError) and "truncated" in str(error).lower():
        return f"truncated image data ({error})"
    return f"corrupt or unsupported image ({type(error).__name__}: {error})"


@contextlib.contextmanager
def pillow_errors(path: str | os.PathLike) -> Iterator[None]:
    """Turn any failure of Pillow inside the block into a :class:`BadImageError` naming ``path``.

    Pillow raises many exception types for corrupt data (OSError, SyntaxError, ValueError,
    EOFError, struct.error, DecompressionBombError, ...), so everything except MemoryError is
    caught here; use this only around Pillow calls.
    """
    try:
        yield
    except (MemoryError, BadImageError):
        raise
    except Exception as error:
        raise BadImageError(path, _reason(Path(path), error)) from error


def max_pixels() -> int:
    """The largest image (height x width) any stage reads: ``$MASKDISTILL_MAX_PIXELS`` (the
    workflow sets it from the config key ``max_pixels``), default :data:`DEFAULT_MAX_PIXELS`."""
    value = os.environ.get(MAX_PIXELS_VARIABLE, "").strip()
    if not value:
        return DEFAULT_MAX_PIXELS
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{MAX_PIXELS_VARIABLE}={value!r}: expected a positive whole number")
    return int(value)


def check_pixels(source: str | os.PathLike, height: int, width: int) -> None:
    """Raise BadImageError naming ``source`` when height x width exceeds :func:`max_pixels`."""
    limit = max_pixels()
    if int(height) * int(width) > limit:
        raise BadImageError(
            source,
            f"{width} x {height} = {int(height) * int(width):,} pixels, more than the limit of "
            f"{limit:,} (config key max_pixels, or {MAX_PIXELS_VARIABLE}; each image's memory "
            "grows with its pixels)",
        )


def _scale_to_uint8(values: np.ndarray, full_scale: float) -> np.ndarray:
    """Map 0..full_scale linearly to 0..255 (rounded); stretch min..max when values exceed it."""
    values = np.nan_to_num(values.astype(np.float64))
    low, high = 0.0, full_scale
    if values.size and (values.min() < 0 or values.max() > full_scale):
        low, high = float(values.min()), float(values.max())
    scaled = (values - low) * (255.0 / max(high - low, np.finfo(np.float64).tiny))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _composite_on_black(rgba: np.ndarray) -> np.ndarray:
    """(H, W, 4) uint8 RGBA -> (H, W, 3) uint8 ``rgb * alpha / 255``, rounded to nearest."""
    rgb = rgba[:, :, :3].astype(np.uint32)
    alpha = rgba[:, :, 3:].astype(np.uint32)
    return ((rgb * alpha + 127) // 255).astype(np.uint8)


def to_rgb(image: Image.Image) -> np.ndarray:
    """Convert a loaded Pillow image of any mode to an (H, W, 3) uint8 RGB array (module doc)."""
    mode = image.mode
    if mode.startswith("I") or mode == "F":
        gray = _scale_to_uint8(np.asarray(image), 1.0 if mode == "F" else 65535.0)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode in ("LA", "PA") or "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        return _composite_on_black(np.asarray(image))
    return np.array(image if image.mode == "RGB" else image.convert("RGB"))


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file fully as RGB.

    Args:
        path: the image file (any format Pillow reads; multi-frame files give their first frame).

    Returns:
        (H, W, 3) uint8 RGB with the EXIF orientation applied (H, W are the displayed size).

    Raises:
        BadImageError: missing, empty, truncated, corrupt, not an image, or over Pillow's
            decompression-bomb pixel limit; the message names the file and the reason.
    """
    with pillow_errors(path), Image.open(path) as image:
        check_pixels(path, image.height, image.width)
        image.load()  # decode every pixel now, so that truncated data fails here
        upright = ImageOps.exif_transpose(image)
        return to_rgb(upright)


def _orientation(image: Image.Image) -> int:
    """The EXIF (or XMP) orientation of an opened image, read from its header only."""
    # PngImageFile.getexif decodes the whole image when no eXIf chunk precedes the pixel data;
    # the base implementation reads the same metadata without decoding.
    exif = Image.Image.getexif(image) if image.format == "PNG" else image.getexif()
    orientation = exif.get(ExifTags.Base.Orientation, 1)
    return orientation if isinstance(orientation, int) else 1


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) of the image as :func:`load_image` returns it, from the file header only.

    A 90-degree EXIF orientation swaps the stored width and height. Raises BadImageError like
    :func:`load_image` when the header cannot be read (a damaged body is not noticed here).
    A PNG whose EXIF chunk follows its pixel data is sized unrotated (Pillow's header read does
    not see that chunk).
    """
    with pillow_errors(path), Image.open(path) as image:
        width, height = image.size
        check_pixels(path, height, width)
        if _orientation(image) in _SWAPPING_ORIENTATIONS:
            return width, height
        return height, width


def load_or_skip(
    path: str | os.PathLike,
    on_bad_image: str,
    skipped: list[tuple[str, str]],
    name: str | None = None,
) -> np.ndarray | None:
    """:func:`load_image`, or None after recording ``(name or path, reason)`` in ``skipped``.

    Args:
        path: the image file.
        on_bad_image: "error" re-raises BadImageError; "skip" logs a warning and returns None.
        skipped: the run's skip list, appended to in place.
        name: what to record for the file (e.g. the dataset's file_name); default ``str(path)``.
    """
    if on_bad_image not in ON_BAD_IMAGE:
        raise ValueError(f"on_bad_image: expected one of {ON_BAD_IMAGE}, got {on_bad_image!r}")
    try:
        return load_image(path)
    except BadImageError as error:
        if on_bad_image == "error":
            raise
        log.warning("skipping %s", error)
        skipped.append((name if name is not None else str(path), error.reason))
        return None


def _tsv_field(text: str) -> str:
    """``text`` with tabs and line breaks replaced by spaces, so that it fits one TSV cell."""
    return " ".join(str(text).replace("\t", " ").splitlines())


def write_skipped(path: str | os.PathLike, skipped: list[tuple[str, str]]) -> None:
    """Write the skip list atomically as TSV: a ``file<TAB>reason`` header, then one row each.

    The file is written even when nothing was skipped (header only), so that it can be a
    declared workflow output.
    """
    rows = [_SKIPPED_HEADER, *((_tsv_field(f), _tsv_field(r)) for f, r in skipped)]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(f"{file}\t{reason}\n" for file, reason in rows))


def read_skipped(path: str | os.PathLike) -> list[tuple[str, str]]:
    """Read a skip list written by :func:`write_skipped` as ``[(file, reason), ...]``."""
    lines = Path(path).read_text().splitlines()
    if not lines or tuple(lines[0].split("\t")) != _SKIPPED_HEADER:
        raise ValueError(f"{path}: not a skip list (expected the header 'file<TAB>reason')")
    rows = [tuple(line.split("\t", 1)) for line in lines[1:]]
    if any(len(row) != 2 for row in rows):
        raise ValueError(f"{path}: every skip-list row needs a file and a reason")
    return rows
