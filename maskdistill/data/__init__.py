"""Dataset readers: one interface (:class:`Dataset`), three kinds chosen by ``dataset.kind``.

``folder`` (any image folder, no ground truth), ``voc`` (a PASCAL VOC tree) and ``coco`` (an
image folder with a COCO instances JSON); data/README.md describes the layouts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from maskdistill.data.base import Dataset, GTBox, ImageRecord
from maskdistill.data.coco import CocoDataset
from maskdistill.data.folder import FolderDataset
from maskdistill.data.voc import VocDataset

__all__ = ["Dataset", "GTBox", "ImageRecord", "open_dataset"]

KINDS = ("folder", "voc", "coco")


def open_dataset(spec: Mapping, splits: Sequence[str] | None = None) -> Dataset:
    """Open the dataset described by the config's ``dataset`` section.

    Args:
        spec: ``kind`` (folder | voc | coco), ``root``, and per kind ``imagesets`` (voc,
            default Segmentation), ``annotations`` and ``image_list`` (coco).
        splits: VOC split names (union, in order); ignored by folder and coco.

    Raises:
        FileNotFoundError / ValueError: naming the missing path or the bad setting.
    """
    kind = spec.get("kind")
    if kind not in KINDS:
        raise ValueError(f"dataset.kind: expected one of {KINDS}, got {kind!r}")
    if not spec.get("root"):
        raise ValueError(f"dataset.root (--images): the {kind} kind needs a root folder")
    if kind == "folder":
        return FolderDataset(spec["root"])
    if kind == "voc":
        return VocDataset(spec["root"], splits or [], spec.get("imagesets") or "Segmentation")
    return CocoDataset(spec["root"], spec.get("annotations"), spec.get("image_list"))
