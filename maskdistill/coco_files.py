"""The pipeline's COCO JSON files read as Python: annotations by image, masks, predictions.

Stage 2 writes one annotation per image (the pseudo ground truth), stage 3 many scored
predictions per image; stages 4-5, the metrics and the pictures read them with these helpers. They
live apart from the metrics so that a change to how metrics are computed or printed changes no
code fingerprint of a stage that reads these files (no rerun of select or segment).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from maskdistill.data import ImageRecord
from maskdistill.io import read_json
from maskdistill.masks import decode_rle


def index_annotations(coco: Mapping[str, Any], source: str) -> tuple[dict[str, list[dict]], int]:
    """file name -> the image's annotations (JSON order), and the number of categories.

    Checks that every ``category_id`` lies in 1..number of categories.

    Raises:
        ValueError: naming ``source`` (the JSON's path) for a malformed COCO dict.
    """
    try:
        names = {image["id"]: image["file_name"] for image in coco["images"]}
        num_categories = len(coco["categories"])
        by_name: dict[str, list[dict]] = {name: [] for name in names.values()}
        for ann in coco["annotations"]:
            if not 1 <= ann["category_id"] <= num_categories:
                raise ValueError(
                    f"{source}: annotation {ann.get('id')} has category_id {ann['category_id']}, "
                    f"expected 1..{num_categories} (1 + cluster index)"
                )
            by_name[names[ann["image_id"]]].append(ann)
        return by_name, num_categories
    except (KeyError, TypeError) as error:
        raise ValueError(f"{source}: not a COCO instances JSON ({error!r} missing)") from error


def annotations_as_predictions(coco: Mapping[str, Any], source: str) -> list[dict[str, Any]]:
    """The annotations of a COCO instances JSON as a results list: each one a prediction of
    score 1 of its category and mask, with its image's ``file_name`` (stage 5 trained on the
    stage-2 pseudo masks goes through stage 4 this way)."""
    by_name, _ = index_annotations(coco, source)
    return [
        {
            "file_name": name,
            "category_id": ann["category_id"],
            "segmentation": ann["segmentation"],
            "score": 1.0,
        }
        for name, annotations in by_name.items()
        for ann in annotations
    ]


def one_per_image(annotations: Mapping[str, list[dict]], source: str) -> dict[str, dict]:
    """file name -> the image's single annotation (images without one are left out).

    Raises ValueError naming ``source`` when an image has more than one (stage 2 writes one).
    """
    single = {}
    for name, anns in annotations.items():
        if len(anns) > 1:
            raise ValueError(f"{source}: image {name!r} has more than one annotation")
        if anns:
            single[name] = anns[0]
    return single


def annotation_mask(ann: Mapping[str, Any], record: ImageRecord, source: str) -> np.ndarray:
    """The bool (H, W) mask of an annotation, checked against the image's size."""
    return decode_rle(
        ann["segmentation"], (record.height, record.width), f"{source}: {record.file_name!r}"
    )


def by_image(predictions: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """file name -> the image's predictions in descending score."""
    grouped: dict[str, list[Mapping[str, Any]]] = {}
    for p in predictions:
        grouped.setdefault(p["file_name"], []).append(p)
    for group in grouped.values():
        group.sort(key=lambda p: -p["score"])
    return grouped


def most_confident(predictions: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The single best-scoring prediction of each image (the "single" protocol)."""
    best: dict[str, Mapping[str, Any]] = {}
    for p in predictions:
        if p["file_name"] not in best or p["score"] > best[p["file_name"]]["score"]:
            best[p["file_name"]] = p
    return list(best.values())


def read_results(
    paths: Iterable[str], keep: Callable[[str], bool] | None = None
) -> list[dict[str, Any]]:
    """The predictions of COCO results files (stage 3 writes one per shard), in file order.

    Each file is read and filtered in turn, so that only the kept predictions are held: with
    ``keep`` (of an image's file name), those of the images it accepts.

    Raises:
        ValueError: naming the file that is not a results list.
    """
    kept: list[dict[str, Any]] = []
    for path in paths:
        predictions = read_json(path)
        if not isinstance(predictions, list):
            raise ValueError(f"{path}: not a COCO results list")
        kept += predictions if keep is None else [p for p in predictions if keep(p["file_name"])]
    return kept


def read_pseudo_gt(paths: Sequence[str], keep: Callable[[str], bool] | None = None) -> dict:
    """One COCO instances dict from the pseudo ground truth's shard files (stage 2 writes one
    per shard; one whole file works too), in file order.

    Each file is checked (:func:`index_annotations`, naming it) and filtered in turn, so that
    only the kept images and their annotations are held: with ``keep`` (of an image's file
    name), the images it accepts. ``categories`` and ``info`` are the first file's; every file
    must list the same categories.

    Raises:
        ValueError: naming the file that is malformed or lists other categories.
    """
    merged: dict[str, Any] = {"images": [], "annotations": []}
    for path in paths:
        coco = read_json(path)
        index_annotations(coco, path)
        if "categories" not in merged:
            merged |= {"info": coco.get("info", {}), "categories": coco["categories"]}
        elif coco["categories"] != merged["categories"]:
            raise ValueError(f"{path}: other categories than {paths[0]} (not one pseudo GT)")
        images = [i for i in coco["images"] if keep is None or keep(i["file_name"])]
        ids = {image["id"] for image in images}
        merged["images"] += images
        merged["annotations"] += [a for a in coco["annotations"] if a["image_id"] in ids]
    if "categories" not in merged:
        raise ValueError("no pseudo ground truth file given")
    return merged


def files_named(paths: Sequence[str]) -> str:
    """How a message names a file or a shard set: the path, or the first and the count."""
    return paths[0] if len(paths) == 1 else f"{paths[0]} (and {len(paths) - 1} other shards)"
