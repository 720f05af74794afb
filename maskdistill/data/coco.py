"""Dataset kind ``coco``: an image folder plus a COCO instances JSON, optionally an image list.

Ground truth (when the JSON has categories and annotations), per image:

- class index = 1 + position of the category id among the sorted category ids;
- instance masks: the non-crowd annotations in JSON order (masks through pycocotools);
- semantic labels: crowd regions are painted 255 (ignore) first, then each non-crowd mask in
  JSON order with its class, a later annotation winning where two overlap;
- boxes: the non-crowd ``bbox`` values (crowd boxes are left out, as LOST does for COCO20k),
  rounded half up to whole pixels: x0 = round(x), w = round(x + w) - x0.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.coco import COCO

from maskdistill.data.base import Dataset, GTBox, ImageRecord
from maskdistill.images import check_pixels
from maskdistill.io import read_json
from maskdistill.masks import IGNORE, rle_shape
from maskdistill.names import UnsafeNameError, unsafe_reason


def _round(value: float) -> int:
    """Round half up (Python's round() rounds half to even)."""
    return math.floor(value + 0.5)


def read_image_list(path: Path) -> list[str]:
    """File names of an image-list file, one a line (blank lines ignored)."""
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise ValueError(f"{path}: empty image list (expected one image file name a line)")
    return names


def _select(images: list[Mapping], names: list[str], list_path: Path) -> list[Mapping]:
    """The JSON image entries named by an image list, in list order.

    A name matches a ``file_name`` exactly, or else by its last path component, so that the
    COCO20k list's ``train2014/COCO_train2014_....jpg`` lines match the JSON's bare names.
    """
    by_name = {image["file_name"]: image for image in images}
    by_base = {Path(image["file_name"]).name: image for image in images}
    selected = []
    for name in dict.fromkeys(names):
        image = by_name.get(name) or by_base.get(Path(name).name)
        if image is None:
            raise ValueError(f"{list_path}: {name!r} is not an image of the annotations JSON")
        selected.append(image)
    return selected


def _fields(entry: Any, where: str, types: Mapping[str, type | tuple[type, ...]]) -> None:
    """Raise ValueError naming ``where`` unless ``entry`` is a dict with these typed keys."""
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected a JSON object")
    for key, kind in types.items():
        if key not in entry:
            raise ValueError(f"{where}: the key {key!r} is missing")
        if not isinstance(entry[key], kind) or isinstance(entry[key], bool):
            raise ValueError(f"{where}: {key!r} has the wrong type ({type(entry[key]).__name__})")


def check_coco(data: Any, path: str | os.PathLike) -> None:
    """Check a COCO instances dict before anything indexes it; ValueError naming the file, the
    entry and the key.

    Images need ``id``, ``file_name``, positive ``height`` and ``width`` within the pixel limit;
    annotations (when present) an ``image_id`` of an image and a ``category_id``, and an RLE
    ``segmentation`` the size of its image; categories an ``id`` and a ``name``.
    """
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ValueError(f"{path}: not a COCO JSON (no 'images' list)")
    sizes = {}
    for i, image in enumerate(data["images"]):
        where = f"{path}: images[{i}]"
        _fields(image, where, {"id": int, "file_name": str, "height": int, "width": int})
        if image["height"] < 1 or image["width"] < 1:
            raise ValueError(f"{where}: height and width must be positive")
        check_pixels(f"{where} ({image['file_name']!r})", image["height"], image["width"])
        sizes[image["id"]] = (image["height"], image["width"])
    for i, category in enumerate(data.get("categories") or []):
        _fields(category, f"{path}: categories[{i}]", {"id": int, "name": str})
    annotations = data.get("annotations")
    if annotations is not None and not isinstance(annotations, list):
        raise ValueError(f"{path}: 'annotations' is not a list")
    for i, ann in enumerate(annotations or []):
        where = f"{path}: annotations[{i}]"
        _fields(ann, where, {"image_id": int, "category_id": int})
        if ann["image_id"] not in sizes:
            raise ValueError(f"{where}: image_id {ann['image_id']} is not an image of the file")
        if isinstance(ann.get("segmentation"), dict):
            decode_shape = rle_shape(ann["segmentation"], where)
            if decode_shape != sizes[ann["image_id"]]:
                raise ValueError(
                    f"{where}: RLE of size {list(decode_shape)}, its image is "
                    f"{list(sizes[ann['image_id']])}"
                )


class CocoDataset(Dataset):
    """COCO images: id = COCO image id, ordered by id (or by the image list); see the module doc."""

    def __init__(
        self,
        root: str | os.PathLike,
        annotations: str | os.PathLike | None,
        image_list: str | os.PathLike | None = None,
    ) -> None:
        self.image_root = Path(root)
        if not self.image_root.is_dir():
            raise FileNotFoundError(
                f"{self.image_root}: no such folder (dataset kind 'coco' expects the image "
                "folder, e.g. train2014, as dataset.root or --images)"
            )
        if not annotations:
            raise ValueError(
                "dataset.annotations (--annotations): the coco kind needs an instances JSON file"
            )
        self.annotations = Path(annotations)
        if not self.annotations.is_file():
            raise FileNotFoundError(f"{self.annotations}: no such COCO instances JSON file")
        data = read_json(self.annotations)
        check_coco(data, self.annotations)
        self._coco = COCO()
        self._coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            self._coco.createIndex()

        self.rejected = [
            UnsafeNameError(image["file_name"], f"{self.annotations}: image id {image['id']}", why)
            for image in data["images"]
            if (why := unsafe_reason(image["file_name"])) is not None
        ]
        unsafe = {error.name for error in self.rejected}
        images = sorted(
            (image for image in data["images"] if image["file_name"] not in unsafe),
            key=lambda image: image["id"],
        )
        if image_list:
            list_path = Path(image_list)
            if not list_path.is_file():
                raise FileNotFoundError(f"{list_path}: no such image list file")
            images = _select(images, read_image_list(list_path), list_path)
        self._records = [
            ImageRecord(
                image["id"],
                image["file_name"],
                self.image_root / image["file_name"],
                image["height"],
                image["width"],
            )
            for image in images
        ]
        category_ids = sorted(self._coco.cats)
        self._class_index = {cat_id: i + 1 for i, cat_id in enumerate(category_ids)}
        if self.has_ground_truth:
            self.class_names = tuple(self._coco.cats[c]["name"] for c in category_ids)

    def records(self) -> list[ImageRecord]:
        return list(self._records)

    @cached_property
    def has_ground_truth(self) -> bool:
        """True when the JSON has categories and an annotations list."""
        return bool(self._coco.cats) and isinstance(self._coco.dataset.get("annotations"), list)

    def _annotations(self, record: ImageRecord, crowd: bool) -> list[dict]:
        """The image's crowd (or non-crowd) annotations in JSON order, category ids checked."""
        anns = self._coco.imgToAnns.get(record.id, [])
        anns = [ann for ann in anns if bool(ann.get("iscrowd")) == crowd]
        for ann in anns:
            if ann["category_id"] not in self._class_index:
                raise ValueError(
                    f"{self.annotations}: annotation {ann.get('id')} has unknown category_id "
                    f"{ann['category_id']}"
                )
        return anns

    def _mask(self, ann: dict) -> np.ndarray | None:
        """(H, W) bool mask of an annotation; None when it has no segmentation."""
        if not ann.get("segmentation"):
            return None
        return self._coco.annToMask(ann).astype(bool)

    def instance_masks(self, record: ImageRecord) -> list[tuple[np.ndarray, int]]:
        masks = []
        for ann in self._annotations(record, crowd=False):
            mask = self._mask(ann)
            if mask is not None and mask.any():
                masks.append((mask, self._class_index[ann["category_id"]]))
        return masks

    def semantic_labels(self, record: ImageRecord) -> np.ndarray | None:
        if not self.has_ground_truth:
            return None
        labels = np.zeros((record.height, record.width), dtype=np.uint8)
        for ann in self._annotations(record, crowd=True):
            mask = self._mask(ann)
            if mask is not None:
                labels[mask] = IGNORE
        for mask, label in self.instance_masks(record):
            labels[mask] = label
        return labels

    def boxes(self, record: ImageRecord) -> list[GTBox]:
        boxes = []
        for ann in self._annotations(record, crowd=False):
            x, y, w, h = ann["bbox"]
            x0, y0 = _round(x), _round(y)
            boxes.append(
                GTBox(
                    x=x0,
                    y=y0,
                    w=_round(x + w) - x0,
                    h=_round(y + h) - y0,
                    label=self._class_index[ann["category_id"]],
                )
            )
        return boxes
