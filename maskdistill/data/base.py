"""The dataset interface shared by the folder, VOC and COCO readers."""

from __future__ import annotations

import abc
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from maskdistill.images import image_size
from maskdistill.names import UnsafeNameError, printable


class ImageRecord:
    """One image of a dataset.

    ``height`` and ``width`` are the size :func:`maskdistill.images.load_image` returns (EXIF
    orientation applied). When the reader does not pass them they are read from the file header
    on first access and cached, so that listing a large folder reads no file at all; that first
    access raises :class:`maskdistill.images.BadImageError` for an unreadable header.
    """

    __slots__ = ("id", "file_name", "path", "_size")

    def __init__(
        self,
        id: int,
        file_name: str,
        path: str | os.PathLike,
        height: int | None = None,
        width: int | None = None,
    ) -> None:
        self.id = int(id)
        self.file_name = str(file_name)
        self.path = Path(path)
        self._size = None if height is None or width is None else (int(height), int(width))

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) in pixels."""
        if self._size is None:
            self._size = image_size(self.path)
        return self._size

    @property
    def height(self) -> int:
        return self.size[0]

    @property
    def width(self) -> int:
        return self.size[1]

    def _key(self) -> tuple[int, str, Path]:
        return self.id, self.file_name, self.path

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ImageRecord) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        size = "unread" if self._size is None else f"{self._size[0]}x{self._size[1]}"
        return f"ImageRecord(id={self.id}, file_name={self.file_name!r}, size={size})"

    def __getstate__(self) -> tuple:
        return self.id, self.file_name, self.path, self._size

    def __setstate__(self, state: tuple) -> None:
        self.id, self.file_name, self.path, self._size = state


@dataclass(frozen=True)
class GTBox:
    """A ground-truth box in 0-based pixels with exclusive end: columns x .. x + w - 1."""

    x: int
    y: int
    w: int
    h: int
    label: int  # class index 1..C
    difficult: bool = False


class Dataset(abc.ABC):
    """Images plus, when the dataset has it, ground truth.

    Attributes:
        image_root: the folder the images lie under.
        class_names: ground-truth class names without background (class index i + 1 is
            ``class_names[i]``); empty without ground truth.
        rejected: the images whose names are not plain relative paths (one
            :class:`~maskdistill.names.UnsafeNameError` each, naming the file and line the name
            came from); they are left out of :meth:`records`.
    """

    image_root: Path
    class_names: tuple[str, ...] = ()
    rejected: list[UnsafeNameError] = []

    @abc.abstractmethod
    def records(self) -> list[ImageRecord]:
        """Every image of the dataset with a usable name, in the dataset's fixed order."""

    def usable_records(
        self,
        on_bad_image: str,
        skipped: list[tuple[str, str]],
        keep: Callable[[str], bool] = lambda name: True,
    ) -> list[ImageRecord]:
        """:meth:`records`, after deciding about the rejected names as about bad images.

        Args:
            on_bad_image: ``error`` raises UnsafeNameError for the first rejected name;
                ``skip`` appends the rejected names that ``keep`` selects (e.g. those of this
                job's shard) to ``skipped``.
        """
        records = self.records()  # a folder lists (and rejects) on first use
        if self.rejected and on_bad_image == "error":
            raise self.rejected[0]
        skipped += [
            (printable(error.name), str(error)) for error in self.rejected if keep(error.name)
        ]
        return records

    @property
    def has_ground_truth(self) -> bool:
        """Whether the images come with ground truth (labels, instances or boxes)."""
        return False

    def semantic_labels(self, record: ImageRecord) -> np.ndarray | None:
        """(H, W) uint8: 0 background, 1..C classes, 255 ignore; None when the image has none."""
        return None

    def instance_masks(self, record: ImageRecord) -> list[tuple[np.ndarray, int]]:
        """[(mask (H, W) bool, class index 1..C), ...]; empty when the image has none."""
        return []

    def boxes(self, record: ImageRecord) -> list[GTBox]:
        """Ground-truth boxes of the image; empty when it has none."""
        return []
