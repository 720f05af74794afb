"""The format checks every stage-3 prediction file passes, whichever backend wrote it."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from pycocotools.coco import COCO

FIELDS = {"image_id", "file_name", "category_id", "score", "bbox", "segmentation"}


def check_predictions(predictions: Sequence[Mapping[str, Any]], coco: Mapping[str, Any]) -> None:
    """Assert ``predictions`` are COCO results of ``coco``'s images that pycocotools loads:
    exactly the documented fields, category ids 1..K, scores in [0, 1], RLE at the image size."""
    assert predictions, "no predictions"
    ground_truth = COCO()
    ground_truth.dataset = copy.deepcopy(dict(coco))
    ground_truth.createIndex()
    loaded = ground_truth.loadRes(copy.deepcopy(list(predictions)))  # it adds fields
    assert len(loaded.getAnnIds()) == len(predictions)
    sizes = {image["id"]: [image["height"], image["width"]] for image in coco["images"]}
    names = {image["id"]: image["file_name"] for image in coco["images"]}
    num_classes = len(coco["categories"])
    for p in predictions:
        assert set(p) == FIELDS, sorted(p)
        assert 1 <= p["category_id"] <= num_classes and 0 <= p["score"] <= 1
        assert p["segmentation"]["size"] == sizes[p["image_id"]]
        assert p["file_name"] == names[p["image_id"]]
