"""Dataset kind ``voc``: a PASCAL VOC tree (VOC2007, VOC2012, or the demo dataset's copy of it).

Layout below the root (the ``VOC2012`` folder itself)::

    JPEGImages/<id>.jpg                      images (required)
    ImageSets/<imagesets>/<split>.txt        one image id per line (required per split)
    SegmentationClass/<id>.png               class indices, 255 = ignore (optional)
    SegmentationClassAug/<id>.png            same, for ids without SegmentationClass (optional)
    SegmentationObject/<id>.png              instance ids 1..N, 255 = ignore (optional)
    Annotations/<id>.xml                     boxes with class name and difficult flag (optional)
    classes.txt                              class names, one a line, no background (optional;
                                             default: the 20 VOC classes)
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

import numpy as np

from maskdistill.data.base import Dataset, GTBox, ImageRecord
from maskdistill.masks import IGNORE, read_label_png
from maskdistill.names import UnsafeNameError, unsafe_reason

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip
LABEL_FOLDERS = ("SegmentationClass", "SegmentationClassAug")


def read_class_names(path: Path) -> tuple[str, ...]:
    """Class names from a text file, one a line (blank lines ignored), without background."""
    names = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
    if not names:
        raise ValueError(f"{path}: no class names (expected one class name a line)")
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: class names repeat")
    if len(names) >= IGNORE:
        raise ValueError(f"{path}: {len(names)} classes; at most {IGNORE - 1} fit in a label PNG")
    return names


def read_split(path: Path) -> list[str]:
    """Image ids of a VOC split file: the first word of each non-blank line."""
    return [image_id for _, image_id in numbered_split(path)]


def numbered_split(path: Path) -> list[tuple[int, str]]:
    """(line number, image id) of each non-blank line of a VOC split file (ids unchecked)."""
    lines = path.read_text(errors="surrogateescape").splitlines()
    return [(number, line.split()[0]) for number, line in enumerate(lines, 1) if line.strip()]


def split_rejects(path: Path) -> list[UnsafeNameError]:
    """The lines of a split file whose id is not a plain relative name
    (:mod:`maskdistill.names`), each naming the file and line: they are left out."""
    rejects = []
    for number, image_id in numbered_split(path):
        reason = unsafe_reason(image_id)
        if reason is not None:
            rejects.append(UnsafeNameError(f"{image_id}.jpg", f"{path}:{number}", reason))
    return rejects


def _require_dir(path: Path, what: str) -> None:
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such folder (expected {what})")


def _check_values(labels: np.ndarray, allowed_max: int, path: Path, what: str) -> None:
    """Raise ValueError when ``labels`` holds a value other than 0..allowed_max or 255."""
    values = np.unique(labels)
    bad = values[(values > allowed_max) & (values != IGNORE)]
    if bad.size:
        raise ValueError(
            f"{path}: {what} holds values {bad.tolist()}; expected 0..{allowed_max} or {IGNORE}"
        )


class VocDataset(Dataset):
    """The images of one or more VOC splits (union in order, each id once); see the module doc.

    Record ids are positions in that order; file_name is ``<id>.jpg``. Ground-truth files are
    optional per image: an image without one gets None / an empty list from that method.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        splits: Sequence[str],
        imagesets: str = "Segmentation",
    ) -> None:
        self.root = Path(root)
        _require_dir(
            self.root, "a VOC dataset folder such as VOCdevkit/VOC2012 as dataset.root or --images"
        )
        self.image_root = self.root / "JPEGImages"
        _require_dir(self.image_root, f"the VOC images folder JPEGImages below {self.root}")
        split_dir = self.root / "ImageSets" / imagesets
        _require_dir(split_dir, f"VOC split files ImageSets/{imagesets}/<split>.txt")
        if not splits:
            raise ValueError(f"{split_dir}: no split requested (e.g. train, val, trainval)")
        ids: dict[str, None] = {}
        self.rejected = []
        for split in splits:
            split_file = split_dir / f"{split}.txt"
            if not split_file.is_file():
                available = sorted(p.stem for p in split_dir.glob("*.txt") if "_" not in p.stem)
                raise FileNotFoundError(
                    f"{split_file}: no such split file (splits in {split_dir}: {available})"
                )
            rejects = split_rejects(split_file)
            self.rejected += rejects
            unsafe = {error.name for error in rejects}
            ids.update(dict.fromkeys(i for i in read_split(split_file) if f"{i}.jpg" not in unsafe))
        self._records = [
            ImageRecord(i, f"{image_id}.jpg", self.image_root / f"{image_id}.jpg")
            for i, image_id in enumerate(ids)
        ]
        classes_file = self.root / "classes.txt"
        self.class_names = read_class_names(classes_file) if classes_file.is_file() else VOC_CLASSES
        self._class_index = {name: i + 1 for i, name in enumerate(self.class_names)}

    def records(self) -> list[ImageRecord]:
        return list(self._records)

    def _gt_file(self, record: ImageRecord, folder: str, suffix: str) -> Path:
        return self.root / folder / f"{Path(record.file_name).stem}{suffix}"

    def _label_file(self, record: ImageRecord) -> Path | None:
        for folder in LABEL_FOLDERS:
            path = self._gt_file(record, folder, ".png")
            if path.is_file():
                return path
        return None

    @cached_property
    def has_ground_truth(self) -> bool:
        """True when every image has a label PNG, or every image has an Annotations XML."""
        return bool(self._records) and (
            all(self._label_file(r) is not None for r in self._records)
            or all(self._gt_file(r, "Annotations", ".xml").is_file() for r in self._records)
        )

    def semantic_labels(self, record: ImageRecord) -> np.ndarray | None:
        path = self._label_file(record)
        if path is None:
            return None
        labels = read_label_png(path)
        _check_values(labels, len(self.class_names), path, "the class label map")
        return labels

    def instance_masks(self, record: ImageRecord) -> list[tuple[np.ndarray, int]]:
        """Each object of SegmentationObject with the majority class of its pixels."""
        path = self._gt_file(record, "SegmentationObject", ".png")
        if not path.is_file():
            return []
        objects = read_label_png(path)
        labels = self.semantic_labels(record)
        if labels is None or labels.shape != objects.shape:
            raise ValueError(
                f"{path}: needs a SegmentationClass PNG of the same size to give each object "
                f"its class (found {None if labels is None else labels.shape})"
            )
        masks = []
        for object_id in np.unique(objects):
            if object_id in (0, IGNORE):
                continue
            mask = objects == object_id
            classes = labels[mask]
            classes = classes[(classes != 0) & (classes != IGNORE)]
            if classes.size == 0:
                raise ValueError(f"{path}: object {object_id} has no class in SegmentationClass")
            masks.append((mask, int(np.bincount(classes).argmax())))
        return masks

    def boxes(self, record: ImageRecord) -> list[GTBox]:
        """Boxes of Annotations/<id>.xml (1-based inclusive corners -> 0-based x, y, w, h)."""
        path = self._gt_file(record, "Annotations", ".xml")
        if not path.is_file():
            return []
        try:
            objects = ET.parse(path).getroot().iter("object")
            return [self._box(obj) for obj in objects]
        except (ET.ParseError, ValueError, AttributeError, TypeError) as error:
            raise ValueError(f"{path}: not a valid VOC annotation ({error})") from error

    def _box(self, obj: ET.Element) -> GTBox:
        name = obj.findtext("name", "").strip()
        if name not in self._class_index:
            raise ValueError(f"unknown class {name!r} (classes: {', '.join(self.class_names)})")
        bndbox = obj.find("bndbox")
        xmin, ymin, xmax, ymax = (
            round(float(bndbox.findtext(k))) for k in ("xmin", "ymin", "xmax", "ymax")
        )
        return GTBox(
            x=xmin - 1,
            y=ymin - 1,
            w=xmax - xmin + 1,
            h=ymax - ymin + 1,
            label=self._class_index[name],
            difficult=obj.findtext("difficult", "0").strip() == "1",
        )
